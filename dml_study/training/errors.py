"""Exceptions raised by the training engine (each message says what to do next).

Every :class:`TrainingError` is a :class:`dml_study.errors.UserFacingError`: the command
line prints its message as one ``error:`` line and exits with its ``exit_code`` (see the
table in :mod:`dml_study.errors`): 1 for a failed run, 5 (``EXIT_DAMAGED``) for
:class:`DamagedCheckpointError`, 6 (``EXIT_BUSY``) for :class:`RunLockedError`, 128 + signal
for :class:`TrainingInterrupted`. They are still ``RuntimeError`` subclasses, for code that
catches those.
"""

from __future__ import annotations

from pathlib import Path

from dml_study.errors import EXIT_BUSY, EXIT_DAMAGED, EXIT_FAILED, UserFacingError


class TrainingError(UserFacingError, RuntimeError):
    """Base class of training failures (exit 1 unless a subclass says otherwise)."""

    exit_code = EXIT_FAILED


class RunExistsError(TrainingError):
    """The run directory holds a finished run and ``overwrite`` was not requested."""


class RunLockedError(TrainingError):
    """Another live process is training the same run directory (see :mod:`~.lock`)."""

    exit_code = EXIT_BUSY


class DamagedCheckpointError(TrainingError):
    """No checkpoint of the run can be restored: each one is damaged or missing.

    ``reasons`` maps each checkpoint tried to why it was refused.
    """

    exit_code = EXIT_DAMAGED

    def __init__(self, message: str, reasons: dict[Path, str] | None = None):
        self.reasons = dict(reasons or {})
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.reasons))


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
            f"last good checkpoint: {where}. To continue from it with a lower learning rate, "
            "re-run the same config with a smaller optim.lr and run.allow_lr_change=true "
            "(CLI: --lr <smaller> --allow_lr_change true); to start over, pass overwrite=true."
        )


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM arrived: the current step finished and a checkpoint was written.

    ``exit_code`` is the shell convention 128 + signal number (130 for SIGINT, 143 for
    SIGTERM), which the command line exits with.
    """

    def __init__(self, signum: int, step: int, checkpoint: str):
        import signal

        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: interrupted at step {step}; re-run the same command to resume "
            f"(checkpoint {checkpoint})"
        )


class StopRequested(TrainingError):
    """Raised by ``run.stop_after_steps``: simulates a process killed after a given step."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"stopped after global step {step} (run.stop_after_steps)")
