"""The run directory ``<results_dir>/runs/<run_name>/`` and atomic writes into it.

Layout::

    config.yaml          resolved ExperimentConfig
    provenance.json      dml_study.env.environment_report() (+ start time, world size)
    history.json/.csv    one record per epoch (loss terms, SO, orthogonality stats, metrics)
    metrics.json         final metrics + "untrained" baseline; its presence = run FINISHED
    checkpoints/last.pt  full training state (resume)
    checkpoints/best.pt  weights at the best R@1
    proxies_init.npy     proxies before training
    proxies.npy          final proxies
    test_embeddings.npz  final test embeddings and labels

Every file is written to a temporary sibling and moved into place with :func:`os.replace`, so
a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from dml_study.training.errors import RunExistsError


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path: str | Path, writer: Callable[[Any], Any]) -> None:
    """Call ``writer(binary_file_handle)`` on a temp file and atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Records → CSV with the union of their keys as columns (first-seen order)."""
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in columns})
    atomic_write_text(path, buf.getvalue())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.save(fh, array))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))


class RunState(str, Enum):
    """What is in a run directory."""

    NEW = "new"  # nothing (or no checkpoint): start from scratch
    RESUMABLE = "resumable"  # checkpoints/last.pt but no metrics.json
    FINISHED = "finished"  # metrics.json present


class RunDirectory:
    """Paths and state of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_run(cls, results_dir: str | Path | None, run_name: str) -> RunDirectory:
        root = Path(results_dir) if results_dir is not None else default_results_dir()
        return cls(root / "runs" / run_name)

    config = property(lambda self: self.path / "config.yaml")
    provenance = property(lambda self: self.path / "provenance.json")
    history_json = property(lambda self: self.path / "history.json")
    history_csv = property(lambda self: self.path / "history.csv")
    metrics = property(lambda self: self.path / "metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    proxies = property(lambda self: self.path / "proxies.npy")
    proxies_init = property(lambda self: self.path / "proxies_init.npy")
    test_embeddings = property(lambda self: self.path / "test_embeddings.npz")

    def state(self) -> RunState:
        if self.metrics.is_file():
            return RunState.FINISHED
        if self.last_checkpoint.is_file():
            return RunState.RESUMABLE
        return RunState.NEW

    def prepare(self, overwrite: bool) -> RunState:
        """Create the directory; refuse to touch a finished run unless ``overwrite``.

        Returns the state *after* preparation: ``RESUMABLE`` (continue from last.pt) or ``NEW``.
        ``overwrite`` wipes the directory, including a resumable checkpoint.
        """
        state = self.state()
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
            state = RunState.NEW
        elif state is RunState.FINISHED:
            raise RunExistsError(
                f"run directory {self.path} holds a finished run (metrics.json exists); "
                "choose another run_name or pass overwrite=True to replace it"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return state

    def read_json(self, name: str) -> Any:
        with open(self.path / name, encoding="utf-8") as fh:
            return json.load(fh)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"
