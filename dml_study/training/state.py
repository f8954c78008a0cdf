"""A run's progress: the fields ``checkpoints/last.pt`` restores besides model and optimiser.

:class:`TrainState` holds them once; :meth:`TrainState.to_checkpoint` and
:meth:`TrainState.from_checkpoint` write and read them as the flat top-level keys of the
checkpoint dict (the format of every ``last.pt`` written so far), and
:func:`expose_state_fields` lets the trainer keep reading and writing them as its own
attributes (``trainer.global_step`` is ``trainer.train_state.global_step``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dml_study.training.history import History

#: Fields added after the first checkpoints were written; a checkpoint without them
#: restores the field's default.
_ADDED_LATER = frozenset({"epoch_time_s"})


@dataclass
class TrainState:
    """Where a run is and what it has measured so far (restored on resume)."""

    #: Index of the epoch in progress (== epochs done at epoch boundaries).
    epoch: int = 0
    #: Batches of that epoch already trained.
    batch_in_epoch: int = 0
    global_step: int = 0
    #: Sums and count of the per-step loss terms of the epoch in progress.
    partial_sums: dict[str, float] = field(default_factory=dict)
    partial_count: int = 0
    history: History = field(default_factory=History)
    untrained: dict[str, float] | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    last_metrics: dict[str, float] | None = None
    train_time_s: float = 0.0
    #: Training time of the epoch in progress.
    epoch_time_s: float = 0.0

    def to_checkpoint(self) -> dict[str, Any]:
        """The fields as checkpoint entries (``history`` as its list of records)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["partial_sums"] = dict(self.partial_sums)
        out["history"] = self.history.records
        return out

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainState:
        """The progress stored in a checkpoint dict (other entries are ignored).

        Raises ``KeyError`` for a missing field, except those added later.
        """
        values = {
            f.name: state[f.name]
            for f in dataclasses.fields(cls)
            if f.name in state or f.name not in _ADDED_LATER
        }
        values["partial_sums"] = dict(values["partial_sums"])
        values["history"] = History(values["history"])
        return cls(**values)


class _StateField:
    """Class attribute that reads and writes ``instance.train_state.<name>``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return getattr(instance.train_state, self.name)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(instance.train_state, self.name, value)


T = TypeVar("T", bound=type)


def expose_state_fields(cls: T) -> T:
    """Class decorator: every :class:`TrainState` field becomes an attribute of ``cls``
    delegating to the instance's ``train_state``."""
    for f in dataclasses.fields(TrainState):
        setattr(cls, f.name, _StateField(f.name))
    return cls
