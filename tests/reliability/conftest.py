"""Fixtures of the reliability tests: tiny training runs, in process and as real processes.

The tiny recipe is the training tests' one (a 32-px DeiT with patch 8 on a 40-class CUB
fixture, a few seconds per run on CPU), so both suites train the same model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixture_datasets import write_cub_fixture
from reliability_helpers import (
    FIXTURE_CLASSES,
    FIXTURE_IMAGES,
    REFERENCE_EPOCHS,
    cli_args,
    subprocess_env,
    tiny_overrides,
)

from dml_study.config import ExperimentConfig, load_config


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cub_fixture(
        tmp_path_factory.mktemp("cub"), num_classes=FIXTURE_CLASSES,
        images_per_class=FIXTURE_IMAGES,
    )


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def tiny_config(cub_root: Path, results_dir: Path) -> Callable[..., ExperimentConfig]:
    """``tiny_config(**overrides) -> ExperimentConfig`` writing runs under ``results_dir``."""

    def make(**overrides: Any) -> ExperimentConfig:
        return load_config("cub200", **{**tiny_overrides(cub_root, results_dir), **overrides})

    return make


@pytest.fixture
def start_training(cub_root: Path, results_dir: Path) -> Callable[..., subprocess.Popen]:
    """Start ``python -m dml_study.train`` on the tiny recipe (+ overrides) as a process."""
    started: list[subprocess.Popen] = []

    def start(**overrides: Any) -> subprocess.Popen:
        options = {**tiny_overrides(cub_root, results_dir), "dataset": "cub200", **overrides}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dml_study.train", *cli_args(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def reference_run(cub_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted tiny run of ``REFERENCE_EPOCHS`` epochs (trained once per session)."""
    from dml_study.training import train

    results = tmp_path_factory.mktemp("reference") / "results"
    return train(load_config("cub200", **{**tiny_overrides(cub_root, results),
                                          "run_name": "reference",
                                          "epochs": REFERENCE_EPOCHS}))


class TmpFs:
    """A tmpfs of a given size (``mount -t tmpfs``, root only), to fill up for real."""

    def __init__(self, path: Path):
        self.path = path

    def remount(self, size: int) -> None:
        _mount_cmd(["mount", "-o", f"remount,size={size}", "tmpfs", str(self.path)])

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave_free: int) -> Path:
        """Write a filler file so that about ``leave_free`` bytes stay free; returns it."""
        filler = self.path / "filler.bin"
        chunk = b"\0" * (1 << 20)
        with open(filler, "ab") as fh:
            while (excess := self.free() - leave_free) > 0:
                fh.write(chunk[: min(len(chunk), excess)])
                fh.flush()
        return filler


def _mount_cmd(args: list[str]) -> None:
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"`{' '.join(args)}` failed ({out.stderr.strip()}): no tmpfs to fill")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., TmpFs]]:
    """``tmpfs(size, options="") -> TmpFs`` mounted under ``tmp_path``; unmounted afterwards.

    Skips (with the reason) when not root or when the mount fails (a container without
    CAP_SYS_ADMIN): filling a real file system is the point of these tests.
    """
    mounted: list[Path] = []

    def mount(size: int, options: str = "") -> TmpFs:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (run as root, or in CI with sudo)")
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        opts = ",".join(filter(None, [f"size={size}", options]))
        _mount_cmd(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)])
        mounted.append(path)
        return TmpFs(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
