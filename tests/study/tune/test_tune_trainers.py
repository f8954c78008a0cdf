"""Trainers: the batched-frozen seam on real frozen runs, fine-tuned trials through launchers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from study_helpers import write_notebook

from dml_study.config import TRAIN_PARAMETERS, load_config
from dml_study.study.launch.launcher import create_launcher
from dml_study.study.plan.config import load_study_config
from dml_study.study.tiers import frozen
from dml_study.study.tune import plan_searches
from dml_study.study.tune.objective import VALIDATION_PARAMETERS
from dml_study.study.tune.search import Search
from dml_study.study.tune.trainers import FineTunedTrialTrainer, train_frozen_batch
from dml_study.training.run_dir import RunDirectory


def _features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)
    centres = rng.normal(size=(8, 16))

    def sample(*views):
        return (centres[labels] + rng.normal(size=(*views, len(labels), 16))).astype(np.float16)

    return frozen.FrozenFeatures(sample(2), sample(), labels, sample(), labels,
                                 tuple(f"c{i}" for i in range(8)), "synthetic")


def _config(tmp_path, name, **kw):
    return load_config("icons", **{"embedding_dim": 4, "epochs": 3, "batch_size": 16,
                                   "m_per_class": 2, "results_dir": str(tmp_path), "nmi": False,
                                   "run_name": name, **kw})


def test_the_batch_seam_trains_each_run_as_train_frozen_and_stops_the_ones_asked(tmp_path):
    features = _features()
    configs = [_config(tmp_path, f"r{i}", lr=lr) for i, lr in enumerate((1e-3, 1e-2, 1e-1))]
    dirs = [RunDirectory.for_run(tmp_path, c.run.run_name) for c in configs]
    seen = []

    def on_epoch(i, record):
        seen.append((i, record["epoch"]))
        return i == 1 and record["epoch"] == 2

    results = train_frozen_batch(configs, features, dirs, on_epoch=on_epoch)
    assert [r.stopped_after for r in results] == [None, 2, None]
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert dirs[0].is_finished() and not dirs[1].is_finished() and dirs[2].is_finished()
    reference = frozen.train_frozen(_config(tmp_path / "ref", "r2", lr=1e-1), features,
                                    RunDirectory.for_run(tmp_path / "ref", "r2"))
    assert results[2].metrics["R@1"] == reference["R@1"]  # same numbers as train_frozen
    diverging = [_config(tmp_path, "nan", lr=1e12, grad_clip_norm=None)]
    out = train_frozen_batch(diverging, features, [RunDirectory.for_run(tmp_path, "nan")])
    assert out[0].metrics is None and "non-finite" in str(out[0].error)


FAKE_TRAIN = '''
import json, math, os
from pathlib import Path
out = Path(results_dir) / "runs" / run_name
out.mkdir(parents=True, exist_ok=True)
peak = math.exp(-(math.log10(lr) + 3.0) ** 2)
history = [{"epoch": e, "MAP@R": round(peak * (1.0, 2.0, 1.5)[e - 1] / 2, 6), "R@1": peak}
           for e in (1, 2, 3)]
(out / "history.json").write_text(json.dumps(history))
from dml_study.data import get_dataset
from dml_study.data.splits import validation_view
train = get_dataset(dataset, "train")  # as 02_train cuts its folds (contract A)
record = validation_view(train.labels, val_folds, val_fold, val_seed).record(train.class_names)
(out / "validation_classes.json").write_text(json.dumps(record))
(out / "metrics.json").write_text(json.dumps({
    "split": split, "forbid_test": os.environ.get("DML_STUDY_FORBID_TEST"),
    "best": max(history, key=lambda r: r["MAP@R"])}))
'''


@pytest.mark.slow
def test_fine_tuned_trials_train_through_the_local_launcher_under_the_guard(tmp_path):
    defaults = {name: None for name in (*TRAIN_PARAMETERS, *VALIDATION_PARAMETERS)}
    defaults.update(dataset="icons", seed=0, run_name="run", results_dir="results", lr=1e-3)
    write_notebook(tmp_path / "notebooks" / "fake_train.ipynb",
                   "\n".join(f"{k} = {v!r}" for k, v in defaults.items()), FAKE_TRAIN)
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
             "proxy_lr_mult": {"low": 1.0, "high": 100.0, "log": True},
             "head_lr_mult": {"low": 1.0, "high": 10.0, "log": True}}
    study = {"name": "ft", "datasets": ["icons"], "notebooks_dir": "notebooks", "notebooks": [],
             "train_notebook": "fake_train.ipynb",
             "train": {"dataset": "icons", "epochs": 3, "quiet": True},
             "groups": [{"name": "g", "seeds": [0], "variants": {"a": {}, "b": {}}}],
             "headline": {"group": "g", "baseline": "a", "treatment": "b"},
             "tuning": {"trials": {"fine-tuned": 3},
                        "arms": [{"group": "g", "variant": "a", "space": space}]}}
    path = tmp_path / "studies" / "ft.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(study))
    config = load_study_config(path)
    plan = plan_searches(config)[0]
    launcher = create_launcher("local", max_parallel=2)
    trainer = FineTunedTrialTrainer(config, launcher, group="g", variant="a",
                                    directory=plan.directory)
    trainer.check(plan)  # the icons training split is there
    outcome = Search(plan, trainer, batch=2).run()
    assert outcome.counted == 3 and outcome.failed == 0
    chosen = outcome.chosen
    assert chosen["epochs"] == 2 and chosen["complete"]
    for trial in Search(plan, trainer).trials():
        metrics = json.loads(RunDirectory.for_run(config.results_dir, trial.user_attrs[
            "run_names"][0]).metrics.read_text())
        assert metrics["forbid_test"] == "1" and metrics["split"] == "validation"
        assert set(trial.intermediate_values) == {1, 2, 3}
    assert (plan.directory / "trials").is_dir()  # the executed notebooks and logs
    # checked against the icons training split's class ids, which the trainer read itself
    from dml_study.data import get_dataset
    from dml_study.data.splits import validation_split

    ids = np.unique(get_dataset("icons", "train").labels)
    np.testing.assert_array_equal(trainer.training_class_ids(plan), ids)
    record = json.loads((plan.directory / "validation_classes.json").read_text())
    assert record["validation_labels"] == validation_split(ids, 4, 0, 0)[1].tolist()


def test_frozen_trials_of_several_folds_each_train_on_their_own_fold(tmp_path, monkeypatch):
    from tune_helpers import TRAIN_CLASSES, tiny_tuning_study, write_train_features

    from dml_study.data.splits import validation_split
    from dml_study.study.tune.trainers import FrozenTrialTrainer

    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    study = tiny_tuning_study(tmp_path, trials=1, epochs=1, folds=(0, 1, 3))
    write_train_features(study, tmp_path / "cache")
    config = load_study_config(study)
    plan = plan_searches(config, arms=["frozen_so/no_so"])[0]
    trainer = FrozenTrialTrainer(config)
    trainer.check(plan)
    np.testing.assert_array_equal(trainer.training_class_ids(plan), np.arange(TRAIN_CLASSES))
    outcome = Search(plan, trainer).run()
    assert outcome.counted == 1
    names = Search(plan, trainer).trials()[0].user_attrs["run_names"]
    for fold, name in zip((0, 1, 3), names, strict=True):
        run = RunDirectory.for_run(config.results_dir, name)
        record = json.loads(run.validation_classes.read_text())
        kept, held_out = validation_split(np.arange(TRAIN_CLASSES), 4, fold, 0)
        assert record["fold"] == fold and record["validation_labels"] == held_out.tolist()
        assert record["train_labels"] == kept.tolist()
        assert json.loads(run.metrics.read_text())["split"] == "validation"
        assert sorted(set(np.load(run.validation_embeddings)["labels"].tolist())) == [0, 1, 2, 3]
    by_fold = json.loads((plan.directory / "validation_classes.json").read_text())["by_fold"]
    assert sorted(by_fold) == ["0", "1", "3"]


def test_frozen_trial_runs_must_be_validation_runs(tmp_path):
    from tune_helpers import tiny_tuning_study

    from dml_study.study.tune.trainers import FrozenTrialTrainer, first_run_parameters

    config = load_study_config(tiny_tuning_study(tmp_path))
    trainer = FrozenTrialTrainer(config)
    params = first_run_parameters(plan_searches(config)[0])
    assert trainer.experiment(params)[0].data.split == "validation"
    with pytest.raises(ValueError, match="every trial must be a validation run"):
        trainer.experiment({**params, "split": "test"})
