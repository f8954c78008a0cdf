"""Helpers of the reliability tests (imported by their conftest and test modules)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
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
