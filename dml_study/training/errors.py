"""Exceptions raised by the training engine (each message says what to do next)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Base class of training failures."""


class RunExistsError(TrainingError):
    """The run directory holds a finished run and ``overwrite`` was not requested."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN/Inf; carries the global step and the last good checkpoint."""

    def __init__(self, value: float, step: int, epoch: int, batch: int, checkpoint: str | None):
        self.value = value
        self.step = step
        self.epoch = epoch
        self.batch = batch
        self.checkpoint = checkpoint
        where = checkpoint if checkpoint is not None else "none (no checkpoint written yet)"
        super().__init__(
            f"non-finite loss ({value}) at global step {step} (epoch {epoch}, batch {batch}); "
            f"last good checkpoint: {where}. Lower the learning rate or enable gradient "
            "clipping, then resume from that checkpoint by re-running the same config."
        )


class StopRequested(TrainingError):
    """Raised by ``run.stop_after_steps``: simulates a process killed after a given step."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"stopped after global step {step} (run.stop_after_steps)")
