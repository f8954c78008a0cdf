"""Provenance: what software and hardware produced a result.

Every run records :func:`environment_report` next to its config so that a number can be
traced back to the exact package versions, device and git commit that produced it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Distributions whose versions are recorded with every run.
TRACKED_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "timm",
    "faiss-cpu",
    "numpy",
    "scikit-learn",
    "pandas",
    "papermill",
    "pytorch-metric-learning",
)


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out at ``path`` (default: this package's source tree).

    A ``-dirty`` suffix marks uncommitted changes, because such a result cannot be
    reproduced from the commit alone. Changes under the checkout's ``results/`` do not count:
    they are this project's generated outputs (a study regenerates them while it runs), not
    code that changes a number. ``None`` outside a git checkout.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = _git(where, "rev-parse", "HEAD")
        status = ("status", "--porcelain", "--untracked-files=no")
        dirty = _git(where, *status, "--", ":/", ":(top,exclude)results")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


def device_report() -> dict[str, Any]:
    """Accelerator and threading facts that change numbers or speed."""
    import torch

    info: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["cuda_version"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def environment_report() -> dict[str, Any]:
    """Everything recorded with a run: versions, device, threads, platform, git commit and
    the numerical profile in effect (:func:`dml_study.determinism.determinism_report`: CPU
    model and ISA flags, each library's kernel branch, threads)."""
    from dml_study import __version__
    from dml_study.determinism import determinism_report

    return {
        "dml_study": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in TRACKED_PACKAGES},
        **device_report(),
        "git_commit": git_commit(),
        "determinism": determinism_report(),
    }
