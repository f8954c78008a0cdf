"""The frozen-backbone tier on synthetic cached features: run directory, determinism, losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dml_study.config import load_config
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


def test_per_class_subset_keeps_every_class_and_is_seeded():
    labels = np.repeat(np.arange(5), [3, 8, 2, 10, 4])
    keep = frozen.per_class_subset(labels, 3, seed=0)
    counts = np.bincount(labels[keep], minlength=5)
    assert counts.tolist() == [3, 3, 2, 3, 3]
    assert np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(keep, frozen.per_class_subset(labels, 3, seed=0))
    assert not np.array_equal(keep, frozen.per_class_subset(labels, 3, seed=1))
    np.testing.assert_array_equal(frozen.per_class_subset(labels, None, 0), np.arange(27))
    with pytest.raises(frozen.FrozenTierError, match=">= 2"):
        frozen.per_class_subset(labels, 1, 0)


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
