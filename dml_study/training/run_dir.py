"""The run directory ``<results_dir>/runs/<run_name>/`` and atomic writes into it.

Layout::

    config.yaml          resolved ExperimentConfig
    provenance.json      dml_study.env.environment_report() (+ start time, world size)
    history.json/.csv    one record per epoch (loss terms, SO, orthogonality stats, metrics)
    metrics.json         final metrics + "untrained" baseline + "split" + the best epoch
                         ("best" in validation runs, "best_test_selected" in test runs,
                         see BEST_KEYS); its presence = run FINISHED
    checkpoints/last.pt  full training state (resume)
    checkpoints/prev.pt  the checkpoint before last.pt (resume falls back to it)
    checkpoints/last.pt.damaged  a last.pt that failed verification (kept for inspection)
    checkpoints/best.pt  weights at the best epoch (validation MAP@R; test R@1)
    proxies_init.npy     proxies before training
    proxies.npy          final proxies
    test_embeddings.npz  final test embeddings, labels, class and display names
                         (data.split: test)
    validation_embeddings.npz  final embeddings of the held-out classes (data.split: validation)
    validation_classes.json  the class-disjoint validation split (data.split: validation)
    train_class_recall.npy  R@1 of every training class (eval.train_class_recall; frozen tier)
    head.safetensors     frozen tier: the trained head (its backbone is the pretrained one)
    .lock                held by the training process (see :mod:`dml_study.training.lock`)

Every file is written through :mod:`dml_study.atomic_io`, so a killed process never leaves a
half-written file behind; the temporary ``.<name>.*.tmp`` files a ``kill -9`` can orphan are
removed when the run is next opened for training (under its lock, so no writer is alive).
"""

from __future__ import annotations

import json
import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from dml_study.atomic_io import (  # noqa: F401  (re-exported: the trainer writes through these)
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
)
from dml_study.training.errors import RunExistsError
from dml_study.training.lock import LOCK_NAME


def default_results_dir() -> Path:
    """``$DML_RESULTS_DIR``, else ``results/`` of the source checkout, else ``./results``.

    Notebooks run by papermill often have ``notebooks/`` as their working directory; anchoring
    at the checkout keeps all runs in one place no matter where they were started from.
    """
    env = os.environ.get("DML_RESULTS_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "dml_study").is_dir():
        return checkout / "results"
    return Path.cwd() / "results"


def runs_root(results_dir: str | Path | None) -> Path:
    """``<results_dir>/runs``, the folder of all run directories (``None``: the default)."""
    return (Path(results_dir) if results_dir is not None else default_results_dir()) / "runs"


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.save(fh, array))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))


#: ``metrics.json`` key of the best evaluated epoch, by the run's ``data.split``: a
#: validation run's ``"best"`` (by validation MAP@R, ties to the earliest epoch) is what a
#: tuner may read; a test run's best epoch is chosen on the test split (by R@1, Proxy
#: Anchor's reporting protocol), so it is ``"best_test_selected"``, kept for comparison only.
BEST_KEYS: dict[str, str] = {"validation": "best", "test": "best_test_selected"}


#: The metric a run's best epoch is chosen by, per ``data.split``: validation MAP@R (MLRC's
#: checkpoint choice); test R@1 (Proxy Anchor's code).
SELECTION_METRICS: dict[str, str] = {"validation": "MAP@R", "test": "R@1"}


def best_record(records: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    """The record with the highest :data:`SELECTION_METRICS` value (ties: the earliest);
    records without the metric (unevaluated epochs) are skipped; ``None`` if none has it."""
    metric = SELECTION_METRICS[split]
    best: dict[str, Any] | None = None
    for record in records:
        if metric in record and (best is None or record[metric] > best[metric]):
            best = record
    return best


def best_key(split: str) -> str:
    """The ``metrics.json`` key of the best epoch of a ``split`` run (:data:`BEST_KEYS`)."""
    return BEST_KEYS[split]


def run_split(metrics: dict[str, Any]) -> str:
    """``metrics.json["split"]``; files written before the key existed are test runs."""
    return str(metrics.get("split", "test"))


def best_epoch_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The best-epoch record of a run's ``metrics.json`` (``{}`` when absent).

    Validation runs: ``"best"``; test runs: ``"best_test_selected"``, or, in files written
    before the split was recorded, their ``"best"`` (which was test-selected).
    """
    split = run_split(metrics)
    if split == "test" and "split" not in metrics:
        return dict(metrics.get("best") or {})
    return dict(metrics.get(best_key(split)) or {})


class RunState(str, Enum):
    """What is in a run directory."""

    NEW = "new"  # nothing (or no checkpoint): start from scratch
    RESUMABLE = "resumable"  # checkpoints/last.pt or prev.pt but no metrics.json
    FINISHED = "finished"  # metrics.json present


class RunDirectory:
    """Paths and state of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_run(cls, results_dir: str | Path | None, run_name: str) -> RunDirectory:
        """The directory of run ``run_name``: ``<results_dir>/runs/<run_name>``."""
        return cls(runs_root(results_dir) / run_name)

    config = property(lambda self: self.path / "config.yaml")
    provenance = property(lambda self: self.path / "provenance.json")
    history_json = property(lambda self: self.path / "history.json")
    history_csv = property(lambda self: self.path / "history.csv")
    metrics = property(lambda self: self.path / "metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    prev_checkpoint = property(lambda self: self.path / "checkpoints" / "prev.pt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    proxies = property(lambda self: self.path / "proxies.npy")
    proxies_init = property(lambda self: self.path / "proxies_init.npy")
    test_embeddings = property(lambda self: self.path / "test_embeddings.npz")
    validation_embeddings = property(lambda self: self.path / "validation_embeddings.npz")
    validation_classes = property(lambda self: self.path / "validation_classes.json")
    train_class_recall = property(lambda self: self.path / "train_class_recall.npy")
    head_weights = property(lambda self: self.path / "head.safetensors")

    def eval_embeddings(self, split: str) -> Path:
        """Where the final embeddings of the evaluation split go: ``test_embeddings.npz``
        (``data.split: test``) or ``validation_embeddings.npz`` (``validation``)."""
        return self.validation_embeddings if split == "validation" else self.test_embeddings

    def is_finished(self) -> bool:
        """True when ``metrics.json`` exists: the trainer writes it last, so the run is done."""
        return self.metrics.is_file()

    def state(self) -> RunState:
        if self.is_finished():
            return RunState.FINISHED
        # prev.pt alone: killed between the two renames of a checkpoint rotation.
        if self.last_checkpoint.is_file() or self.prev_checkpoint.is_file():
            return RunState.RESUMABLE
        return RunState.NEW

    def prepare(self, overwrite: bool) -> RunState:
        """Create the directory; refuse to touch a finished run unless ``overwrite``.

        Returns the state *after* preparation: ``RESUMABLE`` (continue from last.pt, or
        prev.pt when last.pt is damaged or missing) or ``NEW``.
        ``overwrite`` wipes the directory, including a resumable checkpoint (the lock file
        stays: it is held by the caller). Orphaned temporary files are removed. Call it only
        while holding the run's :class:`~dml_study.training.lock.RunLock`.
        """
        state = self.state()
        if overwrite and self.path.exists():
            self.clear()
            state = RunState.NEW
        elif state is RunState.FINISHED:
            raise RunExistsError(
                f"run directory {self.path} holds a finished run (metrics.json exists); "
                "choose another run_name or pass overwrite=True to replace it"
            )
        self.remove_orphaned_temp_files()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return state

    def clear(self) -> None:
        """Delete everything in the directory except the lock file."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def remove_orphaned_temp_files(self) -> list[Path]:
        """Delete ``.<name>.*.tmp`` files left by a process killed while writing; return them."""
        if not self.path.is_dir():
            return []
        orphans = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        return orphans

    def read_json(self, name: str) -> Any:
        with open(self.path / name, encoding="utf-8") as fh:
            return json.load(fh)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"
