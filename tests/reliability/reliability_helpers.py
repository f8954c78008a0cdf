"""Helpers of the reliability tests (imported by their conftest and test modules)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "training_conftest", Path(__file__).parents[1] / "training" / "conftest.py"
)
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)  # type: ignore[union-attr]
#: The training tests' tiny recipe (32-px DeiT, patch 8) and fixture size.
tiny_overrides = _training.tiny_overrides
FIXTURE_CLASSES = _training.FIXTURE_CLASSES
FIXTURE_IMAGES = _training.FIXTURE_IMAGES

_study_spec = importlib.util.spec_from_file_location(
    "study_helpers", Path(__file__).parents[1] / "study" / "study_helpers.py"
)
_study = importlib.util.module_from_spec(_study_spec)
_study_spec.loader.exec_module(_study)  # type: ignore[union-attr]
#: The study tests' notebook and study-file writers.
write_notebook = _study.write_notebook
write_study = _study.write_study

#: Epochs of the session's uninterrupted reference run (conftest ``reference_run``).
REFERENCE_EPOCHS = 2

#: The checkout under test (subprocesses must import this checkout's dml_study).
CHECKOUT = Path(__file__).resolve().parents[2]


def cli_args(overrides: dict[str, Any]) -> list[str]:
    """``--key value`` options of ``python -m dml_study.train`` (values in YAML syntax)."""
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += [f"--{key}", text]
    return args


def subprocess_env() -> dict[str, str]:
    """The environment of a child process importing this checkout's ``dml_study``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``predicate`` until true; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited ({proc.returncode}) too early:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.05)


def run_train_cli(
    data_root: Path, results_dir: Path, *extra: str, env: dict[str, str] | None = None,
    **overrides: Any,
) -> subprocess.CompletedProcess:
    """``python -m dml_study.train`` on the tiny recipe (+ overrides), run to its end."""
    options = {**tiny_overrides(data_root, results_dir), "dataset": "cub200", **overrides}
    return subprocess.run(
        [sys.executable, "-m", "dml_study.train", *cli_args(options), *extra],
        capture_output=True, text=True, env={**subprocess_env(), **(env or {})}, timeout=900,
    )


def one_error_line(stderr: str, *fragments: str) -> str:
    """The single ``error:`` line of ``stderr`` (which has no traceback), with ``fragments``."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def temp_files(directory: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.*.tmp``) anywhere under ``directory``."""
    return sorted(p for p in directory.rglob(".*.tmp") if p.is_file())
