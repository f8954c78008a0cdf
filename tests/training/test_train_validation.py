"""``data.split: validation`` in the fine-tuned tier: class-disjoint validation classes, the
best epoch on validation MAP@R, and the test split never opened (the tuner's guard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dml_study.data import get_dataset, registry
from dml_study.data.splits import (
    EVAL_SUBSET_SEED,
    FORBID_TEST_ENV,
    TRAIN_SUBSET_SEED,
    TestSplitForbiddenError,
    forbid_test_split,
    subset_per_class,
    validation_split,
)
from dml_study.training import train
from dml_study.training.pipeline import load_datasets


@pytest.fixture
def requested_splits(monkeypatch):
    """Every ``(dataset, split)`` whose records or dataset object are asked for."""
    seen: list[tuple[str, str]] = []
    records, make = registry._records, registry.make_dataset

    def spy_records(name, split, *args, **kw):
        seen.append((name, split))
        return records(name, split, *args, **kw)

    def spy_make(name, split, *args, **kw):
        seen.append((name, split))
        return make(name, split, *args, **kw)

    monkeypatch.setattr(registry, "_records", spy_records)
    monkeypatch.setattr(registry, "make_dataset", spy_make)
    return seen


def test_validation_sets_hold_out_training_classes_and_never_open_test(
    tiny_config, cub_root, requested_splits
):
    config = tiny_config(split="validation", val_fold=1, val_seed=3)
    with forbid_test_split():
        train_set, eval_sets = load_datasets(config, progress=False)
    assert {split for _, split in requested_splits} == {"train"}
    full = get_dataset("cub200", "train", cub_root, progress=False)
    kept, held_out = validation_split(full.labels, 4, 1, 3)
    assert len(held_out) == 5 and len(kept) == 15  # 25 % of the fixture's 20 train classes
    # training set: the kept classes, relabelled 0..C'-1, class names following
    assert train_set.num_classes == 15
    assert train_set.class_names == [full.class_names[c] for c in kept]
    assert sorted(set(train_set.labels.tolist())) == list(range(15))
    for path, label in zip(train_set.paths, train_set.labels, strict=True):
        assert full.labels[full.paths.index(path)] == kept[label]
    # evaluation set: the held-out classes' training images (self-retrieval)
    query = eval_sets.query
    assert eval_sets.split == "validation" and eval_sets.gallery is None
    assert query.split == "validation"
    assert query.class_names == [full.class_names[c] for c in held_out]
    assert set(query.paths) == {p for p, lab in zip(full.paths, full.labels, strict=True)
                                if lab in held_out}
    assert not set(query.paths) & set(train_set.paths)
    # the record names them, and they are disjoint from the test classes
    record = eval_sets.validation
    assert record["validation_classes"] == query.class_names
    assert record["train_classes"] == train_set.class_names
    assert (record["folds"], record["fold"], record["seed"]) == (4, 1, 3)
    test = get_dataset("cub200", "test", cub_root, progress=False)  # outside the guard
    assert not set(record["validation_classes"]) & set(test.class_names)
    assert not set(record["train_classes"]) & set(test.class_names)


def test_per_class_subsets_apply_before_the_cut_and_to_the_evaluated_images(tiny_config,
                                                                             cub_root):
    full = get_dataset("cub200", "train", cub_root, progress=False)
    keep = subset_per_class(full.labels, 6, TRAIN_SUBSET_SEED)
    train_set, sets = load_datasets(
        tiny_config(split="validation", max_train_per_class=6, max_test_per_class=3),
        progress=False)
    assert set(np.bincount(train_set.labels).tolist()) == {6}
    assert set(np.bincount(sets.query.labels).tolist()) == {3}
    assert set(train_set.paths) | set(sets.query.paths) <= {full.paths[i] for i in keep}
    # test split: the same rules on the training and the test split
    train_set, sets = load_datasets(tiny_config(max_train_per_class=6, max_test_per_class=3),
                                    progress=False)
    assert train_set.paths == [full.paths[i] for i in keep]
    test = get_dataset("cub200", "test", cub_root, progress=False)
    rows = subset_per_class(test.labels, 3, EVAL_SUBSET_SEED)
    assert sets.split == "test" and sets.query.paths == [test.paths[i] for i in rows]
    assert train_set.num_classes == 20 and sets.query.num_classes == 20


def test_a_validation_run_trains_on_kept_classes_and_selects_its_best_on_validation(
    tiny_config, requested_splits
):
    config = tiny_config(run_name="val", split="validation", epochs=3, train_class_recall=True)
    with forbid_test_split():
        result = train(config)
    assert {split for _, split in requested_splits} == {"train"}
    run = result.run_dir
    metrics = json.loads(run.metrics.read_text())
    assert metrics["split"] == "validation" and result.split == "validation"
    assert "best_test_selected" not in metrics
    # best = the best validation epoch by MAP@R (ties: the earliest), with all its metrics
    history = result.history[1:]
    scores = [h["MAP@R"] for h in history]
    best = history[int(np.argmax(scores))]
    assert metrics["best"]["epoch"] == best["epoch"]
    assert metrics["best"]["MAP@R"] == max(scores) and metrics["best"]["R@1"] == best["R@1"]
    # trained on C' = 15 classes, evaluated on the 5 held-out ones only
    record = json.loads(run.validation_classes.read_text())
    assert record["split"] == "validation" and len(record["train_classes"]) == 15
    assert np.load(run.proxies).shape[0] == 15
    assert np.load(run.train_class_recall).shape == (15,)
    embeddings = np.load(run.validation_embeddings)
    assert sorted(set(embeddings["labels"].tolist())) == [0, 1, 2, 3, 4]
    assert list(embeddings["class_names"]) == record["validation_classes"]
    assert not run.test_embeddings.exists()


def test_a_test_split_run_under_the_guard_fails_before_anything_is_written(tiny_config,
                                                                           tmp_path):
    with forbid_test_split(), pytest.raises(TestSplitForbiddenError,
                                            match="'test' split of dataset 'cub200'"):
        train(tiny_config(run_name="refused"))
    assert not (tmp_path / "results" / "runs" / "refused").exists()


@pytest.mark.slow
def test_the_command_line_under_the_guard_env_trains_validation_and_refuses_test(
    tiny_config, tmp_path
):
    env = {**os.environ, FORBID_TEST_ENV: "1", "OMP_NUM_THREADS": "1"}

    def run(name: str, split: str) -> subprocess.CompletedProcess:
        cfg = tiny_config(run_name=name, split=split, epochs=1)
        args = []
        for key, value in cfg.flat().items():
            if value is not None:
                args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return subprocess.run([sys.executable, "-m", "dml_study.train", *args], env=env,
                              capture_output=True, text=True, timeout=900)

    ok = run("cli-val", "validation")
    assert ok.returncode == 0, ok.stderr[-2000:]
    run_dir = tmp_path / "results" / "runs" / "cli-val"
    assert json.loads((run_dir / "metrics.json").read_text())["split"] == "validation"
    assert (run_dir / "validation_classes.json").is_file()
    refused = run("cli-test", "test")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: the 'test' split")
    assert "data.split: validation" in refused.stderr


@pytest.mark.slow
def test_papermill_02_train_validation_run_under_the_guard(cub_root, tmp_path):
    import papermill

    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "02_train.ipynb"
    params = {
        "dataset": "cub200", "data_root": str(cub_root), "backbone": "deit_tiny_patch16_224",
        "pretrained": False, "embedding_dim": 32, "epochs": 1, "batch_size": 32,
        "m_per_class": 4, "lr": 1e-3, "image_size": 32, "seed": 0, "split": "validation",
        "val_fold": 2, "run_name": "nb-val", "results_dir": str(tmp_path / "results"),
        "num_workers": 0, "quiet": True,
        "overrides": {"model.set_img_size": True, "model.patch_size": 8, "eval.ks": [1, 2, 4],
                      "data.eval_batch_size": 128},
    }
    with forbid_test_split():  # the kernel inherits DML_STUDY_FORBID_TEST=1
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                                   parameters=params, cwd=str(tmp_path),
                                   kernel_name="python3", progress_bar=False)
    run = tmp_path / "results" / "runs" / "nb-val"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "validation" and metrics["best"]["epoch"] == 1
    assert json.loads((run / "validation_classes.json").read_text())["fold"] == 2
    assert not (run / "test_embeddings.npz").exists()


@pytest.mark.parametrize(("split", "key", "epoch"), [("validation", "best", 2),
                                                      ("test", "best_test_selected", 1)])
def test_the_trainer_selects_the_best_epoch_by_the_splits_metric(tiny_config, monkeypatch,
                                                                 split, key, epoch):
    # Scripted evaluations: R@1 peaks at epoch 1, MAP@R at epoch 2 (tied by epoch 3).
    from dml_study.training.engine import Trainer

    scores = iter([(0.1, 0.1), (0.9, 0.2), (0.5, 0.4), (0.9, 0.4)])

    def scripted(self):
        r1, map_r = next(scores)
        self.last_embeddings = {"query": (np.zeros((2, 4), np.float32), np.array([0, 1]))}
        return {"R@1": r1, "MAP@R": map_r}

    monkeypatch.setattr(Trainer, "evaluate_model", scripted)
    result = train(tiny_config(run_name=f"sel-{split}", split=split, epochs=3))
    metrics = json.loads(result.run_dir.metrics.read_text())
    r1, map_r = [(0.9, 0.2), (0.5, 0.4)][epoch - 1]
    assert metrics[key] == {"epoch": epoch, "R@1": r1, "MAP@R": map_r}
    assert metrics["split"] == split
    assert ({"best", "best_test_selected"} - {key}).isdisjoint(metrics)
    assert result.best_epoch == epoch
