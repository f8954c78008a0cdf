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

from importlib import import_module
from typing import Any

# Exported name -> submodule. Imported on first use (PEP 562), so that the light parts —
# the run directory, its history and lock, which the study reads — do not import torch.
_EXPORTS: dict[str, str] = {
    "RunResult": "engine",
    "Trainer": "engine",
    "train": "engine",
    "NonFiniteLossError": "errors",
    "RunExistsError": "errors",
    "RunLockedError": "errors",
    "StopRequested": "errors",
    "TrainingError": "errors",
    "TrainingInterrupted": "errors",
    "RunLock": "lock",
    "RunDirectory": "run_dir",
    "RunState": "run_dir",
    "default_results_dir": "run_dir",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
