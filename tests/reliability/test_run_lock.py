"""One training process per run: the per-run lock, with real second processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from reliability_helpers import subprocess_env, wait_for

from dml_study.errors import EXIT_BUSY
from dml_study.training import RunDirectory, train
from dml_study.training.errors import RunLockedError
from dml_study.training.lock import RunLock, read_holder
from dml_study.training.report import load_record


def test_second_process_fails_at_once_naming_the_holder(tmp_path: Path):
    run_dir = tmp_path / "runs" / "r"
    with RunLock(run_dir):
        code = textwrap.dedent(f"""
            from dml_study.training.lock import RunLock
            RunLock({str(run_dir)!r}).acquire()
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=subprocess_env(), timeout=120)
        assert out.returncode != 0
        assert "RunLockedError" in out.stderr
        assert f"pid {os.getpid()}" in out.stderr and "another run_name" in out.stderr
    # Released: the next holder gets it and records itself.
    with RunLock(run_dir) as lock:
        assert lock.held and read_holder(lock.path)["pid"] == os.getpid()


def test_lock_of_a_killed_process_is_not_stale(tmp_path: Path):
    run_dir = tmp_path / "runs" / "r"
    code = textwrap.dedent(f"""
        import sys, time
        from dml_study.training.lock import RunLock
        RunLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            RunLock(run_dir).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    with RunLock(run_dir) as lock:  # the OS released the dead process's lock
        assert read_holder(lock.path)["pid"] == os.getpid()


def test_trainer_refuses_a_locked_run_and_leaves_it_alone(tiny_config):
    cfg = tiny_config(run_name="held", epochs=1)
    rd = RunDirectory.for_run(cfg.run.results_dir, "held")
    with RunLock(rd.path), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        train(cfg)
    assert sorted(p.name for p in rd.path.iterdir()) == [".lock"]
    result = train(cfg)  # lock released: trains
    assert result.run_dir.metrics.is_file()
    with RunLock(rd.path) as lock:  # released after the run
        assert lock.held


def test_finished_run_is_read_while_locked(tiny_config):
    result = train(tiny_config(run_name="done", epochs=1))
    with RunLock(result.run_dir.path):
        record = load_record(result.run_dir)
    assert record.metrics["R@1"] == result.metrics["R@1"]


def test_two_concurrent_trainings_exactly_one_trains(start_training, results_dir: Path):
    """Done-when: two processes, one run name, different recipes -> one trains, one fails."""
    run_dir = results_dir / "runs" / "twice"
    first = start_training(run_name="twice", epochs=2)
    # Freeze the first process while it holds the lock (it is inside the run: its
    # provenance is written), so the second one certainly arrives during its run.
    wait_for(lambda: (run_dir / "provenance.json").is_file(), first)
    first.send_signal(signal.SIGSTOP)
    try:
        second = start_training(run_name="twice", epochs=1)
        _out, err = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == EXIT_BUSY, err
    assert f"being trained by pid {first.pid}" in err
    assert "Traceback" not in err  # one clear line, not a stack dump
    _out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err

    # The directory describes one run: config, history and metrics all say 2 epochs.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert config["schedule"]["epochs"] == metrics["epochs"] == 2
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert "resumed" not in json.loads((run_dir / "provenance.json").read_text())


def test_overwrite_keeps_the_lock_file_and_removes_orphaned_temp_files(tiny_config):
    cfg = tiny_config(run_name="tmp", epochs=1, checkpoint_every_steps=1, stop_after_steps=2)
    with pytest.raises(Exception, match="stopped after global step 2"):
        train(cfg)
    rd = RunDirectory.for_run(cfg.run.results_dir, "tmp")
    # What kill -9 during two writes leaves behind.
    orphans = [rd.checkpoints / ".last.pt.abc123.tmp", rd.path / ".test_embeddings.npz.x.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"\0" * 1000)
    result = train(tiny_config(run_name="tmp", epochs=1))
    assert result.resumed
    assert not any(o.exists() for o in orphans)
    assert not list(rd.path.rglob("*.tmp"))
    train(tiny_config(run_name="tmp", epochs=1, overwrite=True))
    assert (rd.path / ".lock").is_file()
