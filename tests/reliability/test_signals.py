"""SIGINT/SIGTERM: finish the step, checkpoint, say how to resume, exit non-zero."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import cli_args, subprocess_env, tiny_overrides, wait_for

from dml_study.training import train
from dml_study.training.checkpoint import load_checkpoint
from dml_study.training.interrupt import GracefulInterrupt

RETRIEVAL_KEYS = ("R@1", "R@2", "R@4", "MAP@R", "RP", "NMI")


def _interrupt(start_training, results_dir: Path, sig: signal.Signals, **overrides):
    run_dir = results_dir / "runs" / "sig"
    proc = start_training(run_name="sig", **overrides)
    # provenance.json is written right before the first training step.
    wait_for(lambda: (run_dir / "provenance.json").is_file(), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err, run_dir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_the_current_step_and_resume_is_bit_identical(
    sig, start_training, results_dir: Path, tiny_config
):
    code, _out, err, run_dir = _interrupt(start_training, results_dir, sig, epochs=3)
    assert code == 128 + sig, err
    match = re.search(r"interrupted at step (\d+); re-run the same command to resume", err)
    assert match, err
    assert "Traceback" not in err
    step = int(match.group(1))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["global_step"] == step
    assert not (run_dir / "metrics.json").exists()

    # Re-running the same command resumes and ends where an uninterrupted run ends.
    resumed = start_training(run_name="sig", epochs=3)
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    full = train(tiny_config(run_name="full", epochs=3))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in RETRIEVAL_KEYS:
        assert metrics[key] == full.metrics[key], key
    np.testing.assert_array_equal(np.load(run_dir / "proxies.npy"), np.load(full.run_dir.proxies))
    a = load_checkpoint(full.run_dir.last_checkpoint)["model"]
    b = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_second_signal_stops_at_once():
    seen = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's
    guard = GracefulInterrupt(on_first=seen.append)
    with guard:
        assert signal.getsignal(signal.SIGTERM) == guard.handle
        guard.handle(signal.SIGINT)
        assert guard.requested and seen == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            guard.handle(signal.SIGINT)
        # The previous handlers are back: a third Ctrl-C does what it did before.
        assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGINT) is before


def test_handlers_are_restored_after_training(tiny_config):
    before = signal.getsignal(signal.SIGTERM)
    train(tiny_config(run_name="h", epochs=1))
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_signal_to_the_whole_process_group_with_workers(cub_root: Path, results_dir: Path):
    """Ctrl-C in a terminal / SLURM signal the data-loader workers too: still a clean stop.

    The signal is sent as soon as training starts, i.e. often while the workers are being
    started (the window ``tests/data/test_data_loader_signals.py`` hits deterministically).
    """
    code, err = _signal_process_group(cub_root, results_dir, "group")
    assert code == 143, err
    assert "re-run the same command to resume" in err and "Traceback" not in err, err


def _signal_process_group(cub_root: Path, results_dir: Path, run_name: str) -> tuple[int, str]:
    options = {**tiny_overrides(cub_root, results_dir), "dataset": "cub200",
               "run_name": run_name, "epochs": 3, "num_workers": 2}
    proc = subprocess.Popen([sys.executable, "-m", "dml_study.train", *cli_args(options)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), start_new_session=True)
    try:
        wait_for(lambda: (results_dir / "runs" / run_name / "provenance.json").is_file(), proc)
        os.killpg(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err
