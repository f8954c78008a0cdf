"""TrainState: the run's progress, written to and read from last.pt's flat keys."""

from __future__ import annotations

import dataclasses

import pytest

from dml_study.training.engine import Trainer
from dml_study.training.history import History
from dml_study.training.state import TrainState

#: The progress keys of every last.pt written so far (the checkpoint format).
CHECKPOINT_KEYS = [
    "epoch", "batch_in_epoch", "global_step", "partial_sums", "partial_count", "history",
    "untrained", "best_epoch", "best_metrics", "last_metrics", "train_time_s", "epoch_time_s",
]


def _state() -> TrainState:
    return TrainState(
        epoch=2, batch_in_epoch=3, global_step=13, partial_sums={"loss": 1.5}, partial_count=3,
        history=History([{"epoch": 0, "step": 0}, {"epoch": 1, "step": 5, "loss": 0.5}]),
        untrained={"R@1": 0.1}, best_epoch=1, best_metrics={"R@1": 0.3},
        last_metrics={"R@1": 0.3}, train_time_s=4.5, epoch_time_s=1.25,
    )


def test_checkpoint_entries_keep_the_flat_format():
    entries = _state().to_checkpoint()
    assert list(entries) == CHECKPOINT_KEYS
    assert entries["history"] == [{"epoch": 0, "step": 0}, {"epoch": 1, "step": 5, "loss": 0.5}]
    assert type(entries["partial_sums"]) is dict


def test_round_trip_and_copies():
    state = _state()
    entries = state.to_checkpoint()
    restored = TrainState.from_checkpoint({**entries, "model": {}, "config": {}})
    assert restored.history.records == state.history.records
    assert dataclasses.replace(restored, history=state.history) == state
    entries["partial_sums"]["loss"] = 99.0
    assert state.partial_sums == {"loss": 1.5}


def test_older_checkpoint_without_epoch_time_and_a_broken_one():
    entries = _state().to_checkpoint()
    del entries["epoch_time_s"]
    assert TrainState.from_checkpoint(entries).epoch_time_s == 0.0
    del entries["global_step"]
    with pytest.raises(KeyError, match="global_step"):
        TrainState.from_checkpoint(entries)


def test_trainer_attributes_delegate_to_its_train_state():
    trainer = Trainer.__new__(Trainer)  # the attributes only, nothing built
    trainer.train_state = TrainState()
    trainer.global_step += 4
    trainer.history.append({"epoch": 0})
    assert trainer.train_state.global_step == 4 and len(trainer.train_state.history) == 1
    trainer.train_state = _state()
    assert trainer.epoch == 2 and trainer.best_metrics == {"R@1": 0.3}
