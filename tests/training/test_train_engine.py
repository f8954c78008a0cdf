"""End-to-end behaviour of the trainer on a tiny fixture (seconds per run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dml_study.config import ExperimentConfig
from dml_study.training import NonFiniteLossError, RunExistsError, StopRequested, train
from dml_study.training import engine as engine_module
from dml_study.training.checkpoint import load_checkpoint

RETRIEVAL_KEYS = ("R@1", "R@2", "R@4", "MAP@R", "RP", "NMI")


def _read(run_dir, name):
    return json.loads((run_dir.path / name).read_text())


def test_training_learns_and_writes_the_run_directory(tiny_config):
    cfg: ExperimentConfig = tiny_config(run_name="learn", epochs=4, so_lambda=0.1)
    result = train(cfg)
    rd = result.run_dir.path
    for name in ("config.yaml", "provenance.json", "history.json", "history.csv", "metrics.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "proxies.npy",
                 "proxies_init.npy", "test_embeddings.npz"):
        assert (rd / name).is_file(), name

    history = result.history
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4
    assert losses[-1] < losses[0]  # the loss decreases
    assert all("so" in h and h["so"] > 0 for h in history[1:])  # SO is logged (λ > 0)
    assert history[0]["epoch"] == 0 and "loss" not in history[0]  # untrained record
    assert all("orth_mean_abs_cos" in h and "R@1" in h for h in history)
    assert [h["backbone_trainable"] for h in history[1:]] == [False, True, True, True]

    metrics = _read(result.run_dir, "metrics.json")
    untrained = metrics["untrained"]
    # Clearly better than the untrained model.
    assert metrics["MAP@R"] > untrained["MAP@R"] + 0.05
    assert metrics["R@1"] >= untrained["R@1"]
    assert set(RETRIEVAL_KEYS) <= set(metrics)
    # A test run's best epoch is chosen on the test split: labelled as such, not "best".
    assert metrics["split"] == "test" and "best" not in metrics
    assert metrics["best_test_selected"]["R@1"] == max(h["R@1"] for h in history[1:])
    assert result.metrics == {k: metrics[k] for k in result.metrics}

    # Files agree with each other and with the model state.
    saved_cfg = yaml.safe_load((rd / "config.yaml").read_text())
    assert saved_cfg["loss"]["so_lambda"] == 0.1 and saved_cfg["run"]["run_name"] == "learn"
    with open(rd / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(history) and float(rows[-1]["loss"]) == pytest.approx(losses[-1])
    last = load_checkpoint(rd / "checkpoints" / "last.pt")
    np.testing.assert_array_equal(np.load(rd / "proxies.npy"), last["loss"]["proxies"].numpy())
    assert not np.array_equal(np.load(rd / "proxies_init.npy"), np.load(rd / "proxies.npy"))
    emb = np.load(rd / "test_embeddings.npz")
    assert emb["embeddings"].shape == (len(emb["labels"]), 32)
    assert len(emb["class_names"]) == 20
    provenance = _read(result.run_dir, "provenance.json")
    assert provenance["world_size"] == 1 and "git_commit" in provenance


def test_train_class_recall_is_written_when_asked(tiny_config):
    plain = train(tiny_config(run_name="plain", epochs=1))
    assert not plain.run_dir.train_class_recall.exists()
    result = train(tiny_config(run_name="per-class", epochs=1, train_class_recall=True))
    recall = np.load(result.run_dir.train_class_recall)
    classes = np.load(result.run_dir.proxies).shape[0]
    assert recall.shape == (classes,)
    assert np.all((recall >= 0) & (recall <= 1))
    # Training is unchanged by the extra evaluation pass.
    assert result.metrics == plain.metrics


def test_same_seed_twice_gives_identical_metrics(tiny_config):
    a = train(tiny_config(run_name="a", epochs=2))
    b = train(tiny_config(run_name="b", epochs=2))
    c = train(tiny_config(run_name="c", epochs=1, seed=1, untrained=False))
    for key in RETRIEVAL_KEYS:
        assert a.metrics[key] == b.metrics[key]
    np.testing.assert_array_equal(
        np.load(a.run_dir.proxies), np.load(b.run_dir.proxies)
    )
    assert not np.array_equal(np.load(a.run_dir.proxies_init), np.load(c.run_dir.proxies_init))


def test_resume_after_kill_mid_epoch_is_bitwise_identical(tiny_config):
    # 20 train classes x 8 images / batch 32 = 5 steps per epoch; stop inside epoch 2
    # (the first epoch after the frozen-backbone warm-up), last checkpoint at step 6.
    full = train(tiny_config(run_name="full", epochs=2))
    with pytest.raises(StopRequested, match="step 8"):
        train(tiny_config(run_name="killed", epochs=2, checkpoint_every_steps=3,
                          stop_after_steps=8))
    killed_dir = full.run_dir.path.parent / "killed"
    assert not (killed_dir / "metrics.json").exists()
    state = load_checkpoint(killed_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 1, 6)

    resumed = train(tiny_config(run_name="killed", epochs=2))
    assert resumed.resumed
    for key in RETRIEVAL_KEYS:
        assert resumed.metrics[key] == full.metrics[key], key
    np.testing.assert_array_equal(np.load(full.run_dir.proxies), np.load(resumed.run_dir.proxies))
    drop = ("time_s", "img_per_s")
    strip = [{k: v for k, v in h.items() if k not in drop} for h in full.history]
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == strip
    a = load_checkpoint(full.run_dir.last_checkpoint)["model"]
    b = load_checkpoint(resumed.run_dir.last_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(_read(resumed.run_dir, "provenance.json")["resumed"]) == 1


def test_finished_run_is_not_overwritten_unless_asked(tiny_config):
    first = train(tiny_config(run_name="once", epochs=1))
    stamp = first.run_dir.metrics.stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="overwrite=True"):
        train(tiny_config(run_name="once", epochs=1))
    assert first.run_dir.metrics.stat().st_mtime_ns == stamp
    again = train(tiny_config(run_name="once", epochs=1, overwrite=True))
    assert again.run_dir.metrics.stat().st_mtime_ns != stamp


def test_resume_with_a_different_recipe_is_refused(tiny_config):
    with pytest.raises(StopRequested):
        train(tiny_config(run_name="r", checkpoint_every_steps=1, stop_after_steps=2))
    with pytest.raises(engine_module.TrainingError, match=r"optim\.lr"):
        train(tiny_config(run_name="r", lr=5e-4))


def test_non_finite_loss_stops_with_step_and_last_checkpoint(tiny_config, monkeypatch):
    real_create_loss = engine_module.create_loss_from_config

    def create_loss_with_nan_at_step_4(*args, **kwargs):
        loss = real_create_loss(*args, **kwargs)
        original = loss.forward
        calls = {"n": 0}

        def forward(embeddings, labels):
            calls["n"] += 1
            out = original(embeddings, labels)
            if calls["n"] == 4:
                loss.last_terms["loss"] = float("nan")
                return out * float("nan")
            return out

        loss.forward = forward
        return loss

    monkeypatch.setattr(engine_module, "create_loss_from_config", create_loss_with_nan_at_step_4)
    cfg = tiny_config(run_name="nan", checkpoint_every_steps=2)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    err = info.value
    expected_ckpt = cfg.run.results_dir + "/runs/nan/checkpoints/last.pt"
    assert err.step == 4 and err.checkpoint == expected_ckpt
    assert "global step 4" in str(err) and expected_ckpt in str(err)
    assert load_checkpoint(expected_ckpt)["global_step"] == 2  # the last good state
    assert not Path(cfg.run.results_dir, "runs", "nan", "metrics.json").exists()


def test_missing_data_fails_before_creating_a_run_directory(tiny_config, tmp_path):
    cfg = tiny_config(run_name="nodata", data_root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="CUB_200_2011"):
        train(cfg)
    assert not (tmp_path / "results" / "runs" / "nodata").exists()


def test_m_per_class_larger_than_smallest_class_trains_with_a_warning(tiny_config, tmp_path):
    # Issue #15: the sampler tops small classes up with replacement, so this must train.
    cfg = tiny_config(run_name="bigm", m_per_class=16, batch_size=32, epochs=1)
    with pytest.warns(UserWarning, match=r"data.m_per_class=16 is larger than the smallest"):
        result = train(cfg)
    assert (tmp_path / "results" / "runs" / "bigm" / "metrics.json").is_file()
    assert result.metrics["R@1"] >= 0.0


@pytest.mark.slow
def test_augmentation_does_not_depend_on_the_number_of_workers(tiny_config):
    # Per-sample seeds: worker processes draw exactly the crops/flips of the main process.
    a = train(tiny_config(run_name="w0", epochs=2, num_workers=0))
    b = train(tiny_config(run_name="w2", epochs=2, num_workers=2))
    for key in RETRIEVAL_KEYS:
        assert a.metrics[key] == b.metrics[key], key
    np.testing.assert_array_equal(np.load(a.run_dir.proxies), np.load(b.run_dir.proxies))
