"""Fixtures of the reliability tests: tiny training runs, in process and as real processes.

The tiny recipe is the training tests' one (a 32-px DeiT with patch 8 on a 40-class CUB
fixture, a few seconds per run on CPU), so both suites train the same model.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixture_datasets import write_cub_fixture
from reliability_helpers import (
    FIXTURE_CLASSES,
    FIXTURE_IMAGES,
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
