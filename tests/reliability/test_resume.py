"""Resuming: the non-finite-loss advice can be followed; time is accounted across resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_study.training import StopRequested, train
from dml_study.training.checkpoint import load_checkpoint


def test_train_time_counts_the_partial_epoch_across_a_resume(tiny_config):
    # 5 steps per epoch; killed after step 8, last checkpoint at step 6 (epoch 2, batch 1).
    with pytest.raises(StopRequested):
        train(tiny_config(run_name="t", epochs=2, checkpoint_every_steps=3, stop_after_steps=8))
    cfg = tiny_config(run_name="t", epochs=2)
    state = load_checkpoint(Path(cfg.run.results_dir) / "runs" / "t" / "checkpoints" / "last.pt")
    done_epochs = sum(h["time_s"] for h in state["history"][1:])
    assert state["epoch_time_s"] > 0
    assert state["train_time_s"] == pytest.approx(done_epochs + state["epoch_time_s"])
    result = train(cfg)
    epochs = [h["time_s"] for h in result.history[1:]]
    assert epochs[1] > state["epoch_time_s"]  # the resumed epoch includes its first step
    assert result.train_time_s == pytest.approx(sum(epochs))
    assert result.run_dir.read_json("metrics.json")["train_time_s"] == result.train_time_s


def test_nonfinite_loss_advice_can_be_followed(tiny_config):
    """The advice: resume from the last checkpoint with a lower lr and allow_lr_change."""
    from dml_study.training.errors import NonFiniteLossError, TrainingError

    assert "allow_lr_change" in str(NonFiniteLossError(float("nan"), 7, 2, 2, "last.pt"))
    with pytest.raises(StopRequested):
        train(tiny_config(run_name="lr", epochs=3, checkpoint_every_steps=3,
                          stop_after_steps=7))
    with pytest.raises(TrainingError, match="allow_lr_change=true"):
        train(tiny_config(run_name="lr", epochs=3, lr=5e-4))
    resumed = train(tiny_config(run_name="lr", epochs=3, lr=5e-4, allow_lr_change=True))
    reference = train(tiny_config(run_name="ref", epochs=3))
    # Before the change (epoch 1) both runs used lr 1e-3; afterwards the resumed one used half.
    assert resumed.history[1]["lr_backbone"] == reference.history[1]["lr_backbone"]
    assert resumed.history[2]["lr_backbone"] == pytest.approx(
        reference.history[2]["lr_backbone"] / 2)
    provenance = resumed.run_dir.read_json("provenance.json")
    assert provenance["lr_changes"] == [{"step": 6, "from": 1e-3, "to": 5e-4}]
    assert "lr: 0.0005" in resumed.run_dir.config.read_text()
