"""Checkpoints: atomic save/load of the full training state and of the RNG states.

``last.pt`` holds everything needed to continue a run bit-for-bit on CPU: model and proxy
weights, optimiser and scheduler state, the position in the data stream (epoch, batches done
in that epoch, global step), the partial-epoch loss sums, history, best metrics, and the RNG
states of torch (CPU and CUDA), Python's ``random`` and NumPy's legacy global generator (the
engine itself draws from explicit generators; the global states are saved because third-party
code — timm layers, torchvision transforms — may draw from them). Under DDP the RNG states of
every rank are stored so each rank continues its own stream.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml_study.training.run_dir import atomic_write_with

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Snapshot of the global RNG states this process may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - saved only because libraries may use it
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus a format version) with :func:`torch.save`."""
    payload = {"version": CHECKPOINT_VERSION, **state}
    atomic_write_with(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=False`` is required for optimiser/RNG states (Python tuples, NumPy arrays);
    only load checkpoints you wrote yourself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {state.get('version')}, "
            f"expected {CHECKPOINT_VERSION}"
        )
    return state
