"""The training engine: ``train(config) -> RunResult`` and its parts.

- :mod:`~dml_study.training.engine` — :class:`Trainer`, :func:`train`, :class:`RunResult`.
- :mod:`~dml_study.training.pipeline` — datasets, per-sample seeded augmentation, resumable
  batch streams, evaluation loaders.
- :mod:`~dml_study.training.optim` — AdamW parameter groups and per-step lr schedules.
- :mod:`~dml_study.training.checkpoint` — atomic checkpoints and RNG states.
- :mod:`~dml_study.training.distributed` — DDP set-up and gathers (global-batch loss).
- :mod:`~dml_study.training.history` / :mod:`~dml_study.training.run_dir` — run directory.
- :mod:`~dml_study.training.lock` — one training process per run directory.
- :mod:`~dml_study.training.interrupt` — SIGINT/SIGTERM: checkpoint, then stop.
- :mod:`~dml_study.training.report` — tables and plots for the 02_train notebook.
"""

from dml_study.training.engine import RunResult, Trainer, train
from dml_study.training.errors import (
    NonFiniteLossError,
    RunExistsError,
    RunLockedError,
    StopRequested,
    TrainingError,
    TrainingInterrupted,
)
from dml_study.training.lock import RunLock
from dml_study.training.run_dir import RunDirectory, RunState, default_results_dir

__all__ = [
    "NonFiniteLossError",
    "RunDirectory",
    "RunExistsError",
    "RunLock",
    "RunLockedError",
    "RunResult",
    "RunState",
    "StopRequested",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "default_results_dir",
    "train",
]
