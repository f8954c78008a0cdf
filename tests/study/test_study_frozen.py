"""The frozen-backbone tier on synthetic cached features: run directory, determinism, losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dml_study.config import load_config, replace
from dml_study.data.splits import (
    FORBID_TEST_ENV,
    TestSplitForbiddenError,
    forbid_test_split,
    validation_split,
)
from dml_study.losses import create_loss_from_config
from dml_study.study.analysis.collect import collect_runs, load_history
from dml_study.study.plan.config import StudyConfigError, study_config_from_dict
from dml_study.study.plan.grid import expand_grid
from dml_study.study.tiers import frozen
from dml_study.training.errors import RunExistsError
from dml_study.training.run_dir import RunDirectory


def _features(
    classes: int = 8, per_class: int = 6, dim: int = 16, views: int = 3, test_offset: int = 8,
    noise: float = 0.8,
) -> frozen.FrozenFeatures:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2 * classes, dim))
    train_labels = np.repeat(np.arange(classes), per_class)
    test_labels = np.repeat(np.arange(classes), per_class)

    def sample(labels, offset, n_views=None):
        shape = (len(labels), dim) if n_views is None else (n_views, len(labels), dim)
        return (centres[labels + offset] + noise * rng.normal(size=shape)).astype(np.float16)

    return frozen.FrozenFeatures(
        train_views=sample(train_labels, 0, views), train_eval=sample(train_labels, 0),
        train_labels=train_labels, test=sample(test_labels, test_offset),
        test_labels=test_labels, class_names=tuple(f"class {i}" for i in range(classes)),
        key="synthetic",
    )


def _config(tmp_path, **kw):
    base = {"embedding_dim": 4, "epochs": 3, "batch_size": 16, "m_per_class": 2,
            "results_dir": str(tmp_path), "nmi": False}
    base.update(kw)
    return load_config("icons", **base)


def test_run_directory_is_complete_and_collectable(tmp_path):
    config = _config(tmp_path, so_lambda=0.1, run_name="frozen-a")
    run = RunDirectory.for_run(tmp_path, "frozen-a")
    metrics = frozen.train_frozen(config, _features(), run)
    for name in ("config.yaml", "history.json", "history.csv", "metrics.json", "proxies.npy",
                 "proxies_init.npy", "test_embeddings.npz", "train_class_recall.npy",
                 "provenance.json"):
        assert (run.path / name).is_file(), name
    stored = json.loads(run.metrics.read_text())
    assert stored["tier"] == "frozen" and stored["num_classes"] == 8
    assert 0.0 <= stored["R@1"] <= 1.0 and "untrained" in stored
    assert metrics["R@1"] == stored["R@1"]
    history = load_history(run.path)
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert {"loss", "so", "R@1", "MAP@R", "orth_mean_abs_cos", "lr_proxies"} <= set(history)
    assert history["so"].iloc[1:].gt(0).all()
    assert np.load(run.path / "proxies.npy").shape == (8, 4)
    assert np.load(run.path / "train_class_recall.npy").shape == (8,)
    table = collect_runs(tmp_path)
    assert table.loc[0, "tier"] == "frozen" and table.loc[0, "so_lambda"] == 0.1
    with pytest.raises(RunExistsError):
        frozen.train_frozen(config, _features(), run)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    features = _features()
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = _config(tmp_path, seed=seed, run_name=name)
        frozen.train_frozen(config, features, RunDirectory.for_run(tmp_path, name))
        results.append(np.load(tmp_path / "runs" / name / "proxies.npy"))
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.allclose(results[0], results[2])


def test_training_learns_the_training_classes(tmp_path):
    # test images from the training classes: the head must learn to separate them
    features = _features(test_offset=0, noise=1.5, dim=64, per_class=10)
    config = _config(tmp_path, epochs=10, run_name="learn", embedding_dim=8, lr=1e-2)
    metrics = frozen.train_frozen(config, features, RunDirectory.for_run(tmp_path, "learn"))
    assert metrics["R@1"] > metrics["untrained"]["R@1"] + 0.2  # measured: 0.39 -> 0.86


def test_matched_constant_arm_has_the_adaptive_arms_mean_margin(tmp_path):
    # One loss builder for both tiers: the control arm is mapping: matched_constant.
    rng = np.random.default_rng(0)
    dist = rng.uniform(0.2, 1.0, size=(6, 6))
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    off = ~np.eye(6, dtype=bool)
    names = [str(i) for i in range(6)]

    def loss(mapping):
        config = _config(tmp_path, loss="adaptive_margin",
                         **{"loss.params": {"text_distances": dist, "mapping": mapping}})
        return create_loss_from_config(config, 6, 4, names)

    adaptive, constant = loss("inverse"), loss("matched_constant")
    margins = adaptive.margins(torch.arange(6)).numpy()
    assert adaptive.average_margin() == pytest.approx(margins[off].mean(), rel=1e-6)
    np.testing.assert_allclose(constant.margins(torch.arange(6)).numpy()[off],
                               adaptive.average_margin(), rtol=1e-6)
    assert constant.average_margin() == pytest.approx(adaptive.average_margin())


def test_adaptive_margins_of_a_frozen_run_are_recorded(tmp_path):
    text = tmp_path / "text.npy"
    np.save(text, np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32))
    config = _config(tmp_path, loss="adaptive_margin", run_name="ada",
                     **{"loss.params": {"text_embeddings": str(text)}})
    metrics = frozen.train_frozen(config, _features(), RunDirectory.for_run(tmp_path, "ada"))
    assert 0.05 <= metrics["mean_margin"] <= 0.25


def test_text_options_only_for_the_adaptive_loss(tmp_path):
    config = _config(tmp_path, **{"loss.params": {"text_source": "glove"}})
    with pytest.raises(ValueError, match=r"unknown argument.*text_source"):
        create_loss_from_config(config, 6, 4, [str(i) for i in range(6)])


def test_frozen_groups_expand_per_dataset_with_their_own_parameters(tmp_path):
    raw = {
        "name": "s", "train": {"dataset": "icons", "loss": "proxy_anchor"},
        "frozen": {"views": 4, "train": {"epochs": 7},
                   "datasets": {"icons": {"embedding_dim": 32}}},
        "groups": [
            {"name": "ft", "seeds": [0], "variants": {"a": {}, "b": {"so_lambda": 0.1}}},
            {"name": "fz", "tier": "frozen", "datasets": ["icons"], "seeds": [0, 1],
             "variants": {"a": {}, "b": {"so_lambda": 0.1}}},
        ],
        "headline": {"group": "ft", "baseline": "a", "treatment": "b"},
    }
    config = study_config_from_dict(raw, root=tmp_path)
    specs = expand_grid(config)
    fz = [s for s in specs if s.group == "fz"]
    ft = [s for s in specs if s.group == "ft"]
    assert all(s.tier == "frozen" and s.run_name.startswith("frozen-icons") for s in fz)
    assert all(s.params["epochs"] == 7 and s.params["embedding_dim"] == 32 for s in fz)
    assert all(s.tier == "fine-tuned" and "epochs" not in s.params for s in ft)
    # same parameters, different tier: different runs
    assert {s.run_name for s in fz}.isdisjoint({s.run_name for s in ft})
    with pytest.raises(StudyConfigError, match="did you mean 'frozen'"):
        study_config_from_dict({**raw, "groups": [{**raw["groups"][1], "tier": "frozn"},
                                                  raw["groups"][0]]}, root=tmp_path)


def test_feature_cache_key_depends_on_the_settings(tmp_path):
    config = _config(tmp_path)
    base = frozen.feature_cache_path(config, frozen.FeatureSettings(), tmp_path)
    assert base.parent == tmp_path / "frozen_features" and base.name.startswith("icons-")
    other = frozen.feature_cache_path(config, frozen.FeatureSettings(views=2), tmp_path)
    subset = frozen.feature_cache_path(
        config, frozen.FeatureSettings(max_train_per_class=4), tmp_path)
    assert len({base, other, subset}) == 3
    # settings that are not set leave the identity (and the cached file) unchanged
    assert frozen.FeatureSettings().identity() == {"views": 8, "feature_seed": 0}


def test_frozen_specs_refuse_to_become_02_train_runs(tmp_path):
    raw = {"name": "s", "train": {"dataset": "icons"},
           "groups": [{"name": "fz", "tier": "frozen", "seeds": [0],
                       "variants": {"a": {}, "b": {"so_lambda": 0.1}}}],
           "headline": {"group": "fz", "baseline": "a", "treatment": "b"}}
    spec = expand_grid(study_config_from_dict(raw, root=tmp_path))[0]
    with pytest.raises(ValueError, match="run_frozen_tier"):
        spec.notebook_parameters(tmp_path)


# --------------------------------------------------------------------------- validation


def _train_file(classes: int = 16, per_class: int = 5, dim: int = 16, views: int = 2,
                noise: float = 0.8) -> frozen.TrainFeatures:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(classes, dim))
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))

    def sample(shape):
        return (centres[labels] + noise * rng.normal(size=shape)).astype(np.float16)

    return frozen.TrainFeatures(
        views=sample((views, len(labels), dim)), eval=sample((len(labels), dim)),
        labels=labels, class_names=tuple(f"class {i}" for i in range(classes)), key="synth",
    )


def test_validation_features_cut_the_training_file_by_class():
    train = _train_file()
    features = frozen.validation_features(train, 4, 1, 2, max_eval_per_class=3)
    kept, held_out = validation_split(train.labels, 4, 1, 2)
    assert features.split == "validation" and features.num_classes == 12
    assert features.class_names == tuple(train.class_names[c] for c in kept)
    rows = np.flatnonzero(np.isin(train.labels, kept))
    np.testing.assert_array_equal(features.train_views, train.views[:, rows])
    np.testing.assert_array_equal(features.train_eval, train.eval[rows])
    np.testing.assert_array_equal(features.train_labels,
                                  np.searchsorted(kept, train.labels[rows]))
    # evaluated: the held-out classes' evaluation views, at most 3 each, labels 0..V-1
    assert np.bincount(features.test_labels).tolist() == [3, 3, 3, 3]
    held_rows = np.flatnonzero(np.isin(train.labels, held_out))
    assert {tuple(r) for r in features.test.tolist()} <= {
        tuple(r) for r in train.eval[held_rows].tolist()}
    assert features.validation["validation_classes"] == [train.class_names[c] for c in held_out]
    assert features.validation["train_classes"] == list(features.class_names)


def test_a_frozen_validation_run_trains_on_kept_classes_and_selects_on_validation(tmp_path):
    features = frozen.validation_features(_train_file(per_class=8), 4, 0, 0)
    config = _config(tmp_path, run_name="fz-val", split="validation", epochs=4)
    run = RunDirectory.for_run(tmp_path, "fz-val")
    metrics = frozen.train_frozen(config, features, run)
    stored = json.loads(run.metrics.read_text())
    assert stored["split"] == metrics["split"] == "validation"
    assert "best_test_selected" not in stored
    history = load_history(run.path).iloc[1:]
    best = history.iloc[int(np.argmax(history["MAP@R"].to_numpy()))]  # earliest on ties
    assert stored["best"]["epoch"] == best["epoch"]
    assert stored["best"]["MAP@R"] == best["MAP@R"] and stored["best"]["R@1"] == best["R@1"]
    assert json.loads(run.validation_classes.read_text()) == features.validation
    assert np.load(run.proxies).shape == (12, 4)  # C' = 12 of the 16 training classes
    assert np.load(run.train_class_recall).shape == (12,)
    embeddings = np.load(run.validation_embeddings)
    assert sorted(set(embeddings["labels"].tolist())) == [0, 1, 2, 3]
    assert not run.test_embeddings.exists()
    # a test run of the same recipe is another run, and refuses validation features
    with pytest.raises(frozen.FrozenTierError, match="split 'validation'"):
        frozen.train_frozen(_config(tmp_path, run_name="fz-test"), features,
                            RunDirectory.for_run(tmp_path, "fz-test"))
    assert config.default_run_name() != replace(config, split="test").default_run_name()


def test_a_test_runs_best_epoch_is_labelled_test_selected(tmp_path):
    config = _config(tmp_path, run_name="fz-t", epochs=3)
    frozen.train_frozen(config, _features(), RunDirectory.for_run(tmp_path, "fz-t"))
    stored = json.loads((tmp_path / "runs" / "fz-t" / "metrics.json").read_text())
    history = load_history(tmp_path / "runs" / "fz-t").iloc[1:]
    assert stored["split"] == "test" and "best" not in stored
    assert stored["best_test_selected"]["R@1"] == history["R@1"].max()


def test_frozen_subsets_come_from_the_feature_settings(tmp_path):
    settings = frozen.FeatureSettings(max_train_per_class=4)
    frozen.check_subset_settings(_config(tmp_path, max_train_per_class=4), settings)
    frozen.check_subset_settings(_config(tmp_path), settings)
    with pytest.raises(frozen.FrozenTierError, match=r"frozen\.features\.icons"):
        frozen.check_subset_settings(_config(tmp_path, max_train_per_class=5), settings)


# ------------------------------------------------------------ feature cache and the guard


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    from fixture_datasets import write_cub_fixture

    return write_cub_fixture(tmp_path_factory.mktemp("cub"), num_classes=32, images_per_class=5)


#: A random-init EfficientNet-Lite0 at 32 px on the CUB fixture (16 train classes).
TINY_CUB = {"backbone": "efficientnet_lite0", "pretrained": False, "image_size": 32,
            "embedding_dim": 8, "epochs": 2, "batch_size": 16, "m_per_class": 2, "lr": 1e-3,
            "nmi": False, "ks": [1, 2], "eval_batch_size": 64, "num_workers": 0, "quiet": True}


def _cub_config(cub_root, results, **kw):
    return load_config("cub200", data_root=str(cub_root), results_dir=str(results),
                       **{**TINY_CUB, **kw})


SETTINGS = frozen.FeatureSettings(views=2, max_test_per_class=4)


def test_feature_cache_is_split_and_a_validation_run_reads_only_training_data(
    cub_root, tmp_path, monkeypatch
):
    from dml_study.data import registry

    seen: list[str] = []
    records = registry._records
    monkeypatch.setattr(registry, "_records",
                        lambda name, split, *a, **k: (seen.append(split), records(
                            name, split, *a, **k))[1])
    val_config = _cub_config(cub_root, tmp_path, split="validation")
    test_config = _cub_config(cub_root, tmp_path)
    only_train, both = tmp_path / "a", tmp_path / "b"
    with forbid_test_split():
        val = frozen.extract_features(val_config, SETTINGS, only_train)
    assert seen == ["train"]  # the validation run's extraction read training images only
    files = sorted(p.name for p in (only_train / "frozen_features").iterdir())
    assert len(files) == 1 and files[0].endswith("-train.npz")
    assert frozen.feature_cache_path(val_config, SETTINGS, only_train, "train").is_file()

    full = frozen.extract_features(test_config, SETTINGS, both)
    names = sorted(p.name for p in (both / "frozen_features").iterdir())
    assert [n.rsplit("-", 1)[1] for n in names] == ["test.npz", "train.npz"]
    assert names[0].rsplit("-", 1)[0] == names[1].rsplit("-", 1)[0] == full.key
    assert full.split == "test" and full.num_classes == 16
    assert full.train_views.shape[:2] == (2, 80) and full.test.shape[0] == 16 * 4
    # the training file is the same whichever run extracted it (one seeded backbone) ...
    for name in ("train_views", "train_eval", "train_labels", "class_names"):
        a = np.load(frozen.feature_cache_path(val_config, SETTINGS, only_train, "train"))
        b = np.load(frozen.feature_cache_path(test_config, SETTINGS, both, "train"))
        np.testing.assert_array_equal(a[name], b[name])
    # ... and a validation run's features are that file's validation view
    again = frozen.validation_features(frozen.load_train_features(test_config, SETTINGS, both),
                                       4, 0, 0, max_eval_per_class=4, eval_subset_seed=1)
    np.testing.assert_array_equal(val.test, again.test)
    np.testing.assert_array_equal(val.train_views, again.train_views)
    assert val.validation == again.validation and val.num_classes == 12
    # under the guard a test run can neither read cached test features nor extract them
    with forbid_test_split():
        with pytest.raises(TestSplitForbiddenError, match=r"test features .*-test\.npz"):
            frozen.extract_features(test_config, SETTINGS, both)
        with pytest.raises(TestSplitForbiddenError, match="'test' split of dataset"):
            frozen.extract_features(test_config, SETTINGS, only_train)
    assert sorted(p.name for p in (only_train / "frozen_features").iterdir()) == files


@pytest.mark.slow
def test_frozen_runs_in_a_guarded_process_validation_trains_test_fails(cub_root, tmp_path):
    script = (
        "import sys\n"
        "from dml_study.config import load_config\n"
        "from dml_study.study.tiers import frozen\n"
        "from dml_study.training.run_dir import RunDirectory\n"
        "split, results = sys.argv[1], sys.argv[2]\n"
        f"config = load_config('cub200', split=split, data_root={str(cub_root)!r}, "
        f"results_dir=results, **{TINY_CUB!r})\n"
        "settings = frozen.FeatureSettings(views=2, max_test_per_class=4)\n"
        "features = frozen.extract_features(config, settings, results)\n"
        "frozen.train_frozen(config, features, RunDirectory.for_run(results, split))\n"
    )
    env = {**os.environ, FORBID_TEST_ENV: "1", "OMP_NUM_THREADS": "1"}

    def run(split):
        return subprocess.run([sys.executable, "-c", script, split, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=900)

    ok = run("validation")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "runs" / "validation" / "metrics.json").read_text())[
        "split"] == "validation"
    assert (tmp_path / "runs" / "validation" / "validation_classes.json").is_file()
    refused = run("test")
    assert refused.returncode != 0 and "TestSplitForbiddenError" in refused.stderr
    assert "data.split: validation" in refused.stderr
    assert not (tmp_path / "runs" / "test").exists()

