"""Checkpoints: atomic, rotated, verified save/load of the full training state and RNG states.

``last.pt`` holds everything needed to continue a run bit-for-bit on CPU: model and proxy
weights, optimiser and scheduler state, the position in the data stream (epoch, batches done
in that epoch, global step), the partial-epoch loss sums, history, best metrics, and the RNG
states of torch (CPU and CUDA), Python's ``random`` and NumPy's legacy global generator (the
engine itself draws from explicit generators; the global states are saved because third-party
code — timm layers, torchvision transforms — may draw from them). Under DDP the RNG states of
every rank are stored so each rank continues its own stream.

**Rotation.** ``prev.pt`` is the checkpoint before ``last.pt``. :func:`save_checkpoint` with
``keep_previous`` writes the new state to a temporary file, ``fsync``\\ s it, renames
``last.pt`` → ``prev.pt``, renames the temporary file → ``last.pt`` and syncs the directory
(:func:`dml_study.atomic_io.atomic_write_with`). Killed between any two steps, the run has at
least one complete checkpoint and no half-written file under either name:

==========================  ==========================================================
killed ...                  on disk (what :func:`resume_checkpoint` loads)
==========================  ==========================================================
while writing the temp      old ``last.pt`` and ``prev.pt``, an orphaned ``.tmp`` (removed
                            when the run is next opened) → old ``last.pt``
after the first rename      no ``last.pt``; ``prev.pt`` = old ``last.pt`` → ``prev.pt``
after the second rename     new ``last.pt``, ``prev.pt`` = old ``last.pt`` → new ``last.pt``
==========================  ==========================================================

The price is disk space: while a checkpoint is written, three copies exist (``prev.pt``,
``last.pt`` and the new one).

**Verification.** :func:`read_checkpoint` accepts a file only when (1) it is a complete zip
archive whose every record matches the CRC-32 stored beside it in the archive — ``torch.save``
computes them while writing (:func:`torch.serialization.get_crc32_options`) but
``torch.load`` does not check them, so a flipped bit in a weight would load silently; Python's
:mod:`zipfile` reads every record and checks them, independently of torch; (2) ``torch.load``
succeeds; (3) its format version is known; (4) for a full training state, the progress fields
agree with each other (:func:`check_progress`). :func:`resume_checkpoint` tries ``last.pt``,
then ``prev.pt``; a damaged ``last.pt`` is set aside as ``last.pt.damaged`` (so the next
rotation does not push the good ``prev.pt`` out) and the fallback is reported as a
:class:`CheckpointFallbackWarning`.

**Safe loading.** Everything is loaded with ``weights_only=True`` (torch's restricted
unpickler: tensors, containers, numbers, strings). Format version 2 stores NumPy's RNG state
as plain values (a tensor of its 624 key words, ints, a float) so no NumPy object is pickled;
version-1 checkpoints, which pickled the state tuple with its ``ndarray``, are read with
exactly the NumPy globals that tuple needs allow-listed (:data:`NUMPY_RNG_GLOBALS`).
"""

from __future__ import annotations

import random
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml_study.errors import DiskFullError, format_bytes, one_line
from dml_study.training.errors import DamagedCheckpointError, TrainingError
from dml_study.training.run_dir import atomic_write_with

#: 2: NumPy's RNG state stored as plain values (loads with ``weights_only=True``).
CHECKPOINT_VERSION = 2
#: Versions this code reads (1: NumPy RNG state as a pickled tuple with an ndarray).
READABLE_VERSIONS = (1, 2)

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

#: The NumPy globals a version-1 checkpoint's RNG state needs (``np.random.get_state()``'s
#: ``ndarray`` of uint32 key words); nothing else is allowed to be unpickled.
NUMPY_RNG_GLOBALS: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                                _np_reconstruct]

#: Keys every full training state (``last.pt``/``prev.pt``) has.
PROGRESS_KEYS = ("model", "loss", "optimizer", "scheduler", "rng", "config", "epoch",
                 "batch_in_epoch", "global_step", "history", "partial_count")


class CheckpointFallbackWarning(UserWarning):
    """``last.pt`` was damaged or missing; the run resumed from ``prev.pt``."""


class CheckpointVersionError(TrainingError, ValueError):
    """A checkpoint of a format version this code does not read (not damage: another
    dml_study wrote it)."""


class CheckpointRejected(Exception):
    """A checkpoint failed verification; ``reason`` says why (one line)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


# ---------------------------------------------------------------------- RNG states


def _numpy_state_plain() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_tuple(state: Any) -> tuple:
    if isinstance(state, dict):  # version 2
        keys = state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        return (state["bit_generator"], keys.astype(np.uint32), state["pos"],
                state["has_gauss"], state["cached_gaussian"])
    return tuple(state)  # version 1: the tuple of np.random.get_state()


def rng_state() -> dict[str, Any]:
    """Snapshot of the global RNG states this process may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_plain(),  # saved only because libraries may use it
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state` (either checkpoint version)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_tuple(state["numpy"]))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- save


def save_checkpoint(
    path: str | Path, state: dict[str, Any], keep_previous: str | Path | None = None
) -> None:
    """Atomically write ``state`` (plus a format version) with :func:`torch.save`.

    With ``keep_previous`` the file at ``path`` becomes ``keep_previous`` in the same step
    (the rotation described in the module docstring). A full disk raises
    :class:`~dml_study.errors.DiskFullError` and leaves both files as they were; with
    rotation its message adds the space all three files need.
    """
    payload = {"version": CHECKPOINT_VERSION, **state}
    try:
        atomic_write_with(path, lambda fh: torch.save(payload, fh), keep_previous=keep_previous)
    except DiskFullError as err:
        if keep_previous is not None and err.needed and not err.note:
            # Freeing just this much is not enough for the next rotation: say the total.
            err.note = (f"a run's checkpoints need ~{format_bytes(3 * err.needed)} in all: "
                        "last.pt, prev.pt and the one being written")
        raise


# ---------------------------------------------------------------------- verify and load


def verify_archive(path: str | Path) -> None:
    """Raise :class:`CheckpointRejected` unless ``path`` is a complete zip whose records all
    match their stored CRC-32 (reads the whole file once)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
        raise CheckpointRejected(path, f"not a complete checkpoint archive ({one_line(err)})") \
            from err
    if bad is not None:
        raise CheckpointRejected(path, f"record {bad} does not match its CRC-32 (corrupted "
                                       "bytes)")


def check_progress(state: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless a full training state's progress fields agree.

    The history has the untrained record (epoch 0) and one per finished epoch, each with
    the global step at its end; so ``len(history) == epoch + 1``, the records' epochs are
    ``0..epoch``, and ``global_step == history[-1]["step"] + batch_in_epoch``. The per-epoch
    loss count equals the batches done in the epoch, and the per-step scheduler has stepped
    once per optimiser step.
    """
    missing = [k for k in PROGRESS_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    epoch, batch, step = state["epoch"], state["batch_in_epoch"], state["global_step"]
    if not all(isinstance(v, int) and v >= 0 for v in (epoch, batch, step)):
        raise ValueError(f"epoch/batch/step not non-negative ints: {epoch}, {batch}, {step}")
    history = state["history"]
    epochs = [r.get("epoch") for r in history]
    if epochs != list(range(epoch + 1)):
        raise ValueError(f"history epochs {epochs} do not match epoch {epoch}")
    end_steps = [r.get("step", 0) for r in history]
    if end_steps != sorted(end_steps) or end_steps[-1] + batch != step:
        raise ValueError(f"global step {step} != last epoch's end step {end_steps[-1]} + "
                         f"{batch} batches")
    if state["partial_count"] != batch:
        raise ValueError(f"{state['partial_count']} partial loss terms for {batch} batches")
    last_epoch = state["scheduler"].get("last_epoch")
    if last_epoch is not None and last_epoch != step:
        raise ValueError(f"scheduler at step {last_epoch}, checkpoint at step {step}")
    if not state["rng"]:
        raise ValueError("no RNG states")


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``, with only the version-1 NumPy globals allowed."""
    with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", full: bool | None = None
) -> dict[str, Any]:
    """The verified state in ``path``, or :class:`CheckpointRejected` saying why not.

    ``full``: check the progress fields (:func:`check_progress`); default: when the state
    has a ``global_step`` (``last.pt``/``prev.pt``, not ``best.pt``). A checkpoint of an
    unknown format version raises :class:`~dml_study.training.errors.TrainingError` (it is
    not damaged: it needs another dml_study); so does one holding objects that
    ``weights_only`` loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointRejected(path, "missing")
    verify_archive(path)
    try:
        state = _torch_load(path, map_location)
    except Exception as err:
        if "Weights only load failed" in str(err):
            raise TrainingError(
                f"checkpoint {path} holds objects that safe loading (weights_only=True) "
                f"refuses: {one_line(str(err).splitlines()[-1])}; it was not written by this "
                "dml_study. Start over with --overwrite true"
            ) from err
        raise CheckpointRejected(path, f"torch.load failed ({one_line(err)[:300]})") from err
    if not isinstance(state, dict):
        raise CheckpointRejected(path, f"holds a {type(state).__name__}, not a state dict")
    version = state.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointVersionError(
            f"checkpoint {path} has format version {version}; this dml_study reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: use the dml_study that wrote it, or "
            "start over with --overwrite true"
        )
    if full if full is not None else "global_step" in state:
        try:
            check_progress(state)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            raise CheckpointRejected(path, f"inconsistent progress fields ({err})") from err
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint written by :func:`save_checkpoint` (any version).

    Raises ``FileNotFoundError`` when ``path`` does not exist and
    :class:`~dml_study.training.errors.DamagedCheckpointError` (exit 5 on the command line)
    when it fails verification.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return read_checkpoint(path, map_location)
    except CheckpointRejected as err:
        raise DamagedCheckpointError(
            f"checkpoint {path} is damaged: {err.reason}; restore a good copy of it",
            {path: err.reason},
        ) from err


@dataclass
class Resumed:
    """The checkpoint a run resumes from, and what was skipped to get there."""

    state: dict[str, Any]
    path: Path
    #: Each newer checkpoint that was refused, with the reason.
    skipped: dict[Path, str]
    #: The warning issued for a fallback (``None``: ``last.pt`` was good).
    warning: str | None = None


def resume_checkpoint(
    candidates: Sequence[str | Path],
    map_location: str | torch.device = "cpu",
    set_aside: bool = True,
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> Resumed:
    """The newest good checkpoint among ``candidates`` (newest first: ``last.pt, prev.pt``).

    A damaged first candidate is renamed ``<name>.damaged`` when a later one is used
    (``set_aside``; only the process owning the run directory should) and a
    :class:`CheckpointFallbackWarning` names both files and the step resumed from.
    ``validate(state)`` may refuse a state by raising ``ValueError``. When none is good,
    raises :class:`~dml_study.training.errors.DamagedCheckpointError` naming each file and
    the fix (start over with ``--overwrite true``).
    """
    paths = [Path(p) for p in candidates]
    skipped: dict[Path, str] = {}
    for path in paths:
        try:
            state = read_checkpoint(path, map_location, full=True)
            if validate is not None:
                validate(state)
        except CheckpointRejected as err:
            skipped[path] = err.reason
            continue
        except ValueError as err:
            skipped[path] = f"refused ({err})"
            continue
        resumed = Resumed(state, path, skipped)
        if skipped:
            resumed.warning = _fallback_message(paths[0], skipped, path, state, set_aside)
            warnings.warn(resumed.warning, CheckpointFallbackWarning, stacklevel=2)
        return resumed
    described = "; ".join(f"{p} is {'missing' if r == 'missing' else 'damaged: ' + r}"
                          for p, r in skipped.items())
    raise DamagedCheckpointError(
        f"no checkpoint to resume from: {described}; start over with --overwrite true "
        "(overwrite=True in Python or papermill), or restore a good copy of one of them",
        skipped,
    )


def _fallback_message(
    newest: Path, skipped: dict[Path, str], used: Path, state: dict[str, Any], set_aside: bool
) -> str:
    reason = skipped.get(newest, "missing")
    if reason == "missing":
        what = (f"{newest} is missing (the process was killed during a checkpoint rotation, "
                "or the file was removed)")
    else:
        what = f"{newest} is damaged ({reason})"
        if set_aside and newest.is_file():
            aside = newest.with_name(newest.name + ".damaged")
            newest.replace(aside)
            what += f"; kept as {aside}"
    return (f"{what}; resuming from {used} at step {state['global_step']} (epoch "
            f"{state['epoch'] + 1}, batch {state['batch_in_epoch']}): the steps after it are "
            "trained again, with the same result")
