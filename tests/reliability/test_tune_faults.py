"""Faults of a tuning run, with real processes (issue #23): kill -9 in a trial and in a
journal write, two ``tune`` processes on one journal, a full disk.

Every test runs the real command, ``python -m dml_study.study tune``, with the package's own
frozen trainer on a tiny frozen study of two arms: the frozen tier's real feature cache (a
generated ``-train.npz`` in the test's ``$DML_STUDY_CACHE``, ``tune_helpers.
write_train_features``), cut into validation folds by ``extract_features``, trained by
``train_frozen`` under the test-split guard. Afterwards it checks the same invariants
(:func:`check_searches`): every arm has exactly its
budget of COMPLETE + PRUNED trials, each budget slot is counted once, no trial is RUNNING or
WAITING, every interrupted trial was retried with its parameters, and ``chosen.json`` /
``trials.csv`` agree with the journal.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[2]
TUNE_TESTS = REPO / "tests" / "study" / "tune"
sys.path.insert(0, str(TUNE_TESTS))

from tune_helpers import tiny_tuning_study, write_train_features  # noqa: E402

from dml_study.study.plan.config import load_study_config  # noqa: E402
from dml_study.study.tune import plan_searches  # noqa: E402
from dml_study.study.tune.storage import SLOT_ATTR, OwnedFileLock, open_storage  # noqa: E402

pytestmark = pytest.mark.slow

BUDGET = 6


def _cache(study: Path) -> Path:
    """The study's ``$DML_STUDY_CACHE``, beside it, with its frozen features written."""
    cache = study.parent.parent / "cache"
    write_train_features(study, cache)
    return cache


def _env(study: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DML_STUDY_CACHE": str(_cache(study))}
    for name in ("DML_STUDY_INJECT_JOURNAL_KILL", "DML_STUDY_INJECT_ENOSPC",
                 "DML_STUDY_FORBID_TEST"):
        env.pop(name, None)
    env.update(extra)
    return env


def _start(study: Path, **env: str) -> subprocess.Popen:
    """``python -m dml_study.study tune --config STUDY --quiet`` in a new process."""
    return subprocess.Popen([sys.executable, "-m", "dml_study.study", "tune", "--config",
                             str(study), "--quiet"], cwd=REPO, env=_env(study, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal_lines(study: Path) -> int:
    total = 0
    for plan in plan_searches(load_study_config(study)):
        with contextlib.suppress(OSError):
            total += plan.journal.read_bytes().count(b"\n")
    return total


def _wait_for_trials(study: Path, proc: subprocess.Popen, more_than: int,
                     timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _journal_lines(study) <= more_than:
        if proc.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def check_searches(study: Path, budget: int = BUDGET) -> dict[str, int]:
    """The invariants of the module docstring; returns FAIL counts by search."""
    failed = {}
    for plan in plan_searches(load_study_config(study)):
        trials = optuna.load_study(study_name=plan.study_name,
                                   storage=open_storage(plan.journal)).get_trials()
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(counted) == budget, plan.label
        assert sorted(t.user_attrs[SLOT_ATTR] for t in counted) == list(range(budget))
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        fails = [t for t in trials if t.state == TrialState.FAIL]
        for fail in fails:
            assert fail.user_attrs.get("interrupted"), fail
            retry = [t for t in trials if t.user_attrs.get("retry_of") == fail.number]
            assert len(retry) == 1
            # a trial killed before it recorded its slot has none; its retry takes a free one
            assert retry[0].user_attrs[SLOT_ATTR] == fail.user_attrs.get(
                SLOT_ATTR, retry[0].user_attrs[SLOT_ATTR])
            assert all(retry[0].params[k] == v for k, v in fail.params.items())
        chosen = json.loads((plan.directory / "chosen.json").read_text())
        assert chosen["n_trials"] == budget and chosen["complete"]
        assert trials[chosen["trial"]].state == TrialState.COMPLETE
        with (plan.directory / "trials.csv").open() as fh:
            assert len(list(csv.DictReader(fh))) == len(trials)
        failed[plan.label] = len(fails)
    return failed


def test_kill_9_in_the_middle_of_trials_then_resume(tmp_path):
    study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=5, pruner="median")
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        proc = _start(study)
        _wait_for_trials(study, proc, _journal_lines(study) + 8)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    proc = _start(study)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    failed = check_searches(study)
    assert kills >= 1
    print(f"{kills} kills, interrupted trials retried: {failed}")


def test_kill_9_in_the_middle_of_a_journal_write_then_resume(tmp_path):
    study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=4)
    torn = 0
    for nth in (9, 23):
        proc = _start(study, DML_STUDY_INJECT_JOURNAL_KILL=str(nth))
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        journals = [p.journal for p in plan_searches(load_study_config(study))
                    if p.journal.is_file()]
        torn += sum(not j.read_bytes().endswith(b"\n") for j in journals)
        assert any(Path(f"{j}.lock").exists() for j in journals)  # died holding the lock
    assert torn == 2  # each kill left a half-written last line
    lock = next(Path(f"{j}.lock") for j in journals if Path(f"{j}.lock").exists())
    began = time.monotonic()
    with OwnedFileLock(lock).held():  # the dead holder's lock is broken, not waited out
        assert time.monotonic() - began < 5
    proc = _start(study)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    check_searches(study)


def test_two_tune_processes_on_one_journal_work_as_parallel_workers(tmp_path):
    study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=6)
    procs = [_start(study) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    assert check_searches(study) == {"icons frozen_so/no_so": 0, "icons frozen_so/so": 0}
    workers = set()
    for plan in plan_searches(load_study_config(study)):
        trials = optuna.load_study(study_name=plan.study_name,
                                   storage=open_storage(plan.journal)).get_trials()
        workers |= {t.user_attrs["worker"]["pid"] for t in trials}
    print(f"trials told by {len(workers)} worker process(es)")
    assert workers <= {p.pid for p in procs}


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                           "tmpfs", str(path)], check=False).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_one_line_and_a_rerun_with_space_completes(tmp_path):
    with _tmpfs(tmp_path / "small", "256k") as small:
        study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=3)
        raw = study.read_text() + f"results_dir: {small}\n"
        study.write_text(raw)
        proc = _start(study)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 4, err[-2000:]
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: disk full writing "), err
        assert "free space and re-run the same command" in lines[0]
        assert "Traceback" not in err
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        proc = _start(study)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        check_searches(study)


def test_a_full_disk_injected_after_the_first_trials_then_resume(tmp_path):
    """Without root: ``$DML_STUDY_INJECT_ENOSPC`` fails the write of ``trials.csv`` (written
    after every told batch) once it outgrows the injection's 512 bytes, so the search stops
    with some trials told and their runs finished."""
    study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=3)
    proc = _start(study, DML_STUDY_INJECT_ENOSPC="trials.csv")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: disk full writing ") and "/trials.csv: needs ~" in lines[0]
    assert "every search resumes from its journal" in lines[0]
    plan = plan_searches(load_study_config(study))[0]
    told = optuna.load_study(study_name=plan.study_name,
                             storage=open_storage(plan.journal)).get_trials()
    # told before the write failed (the injection lets the first 512 bytes of a file through)
    states = [t.state for t in told]
    assert 1 <= len(states) < BUDGET and set(states) == {TrialState.COMPLETE}
    proc = _start(study)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert check_searches(study) == {"icons frozen_so/no_so": 0, "icons frozen_so/so": 0}


def test_sigterm_stops_with_143_and_the_trials_in_flight_are_retried(tmp_path):
    study = tiny_tuning_study(tmp_path, trials=BUDGET, epochs=6)
    proc = _start(study)
    _wait_for_trials(study, proc, 8)
    if proc.poll() is not None:
        pytest.fail(f"tune ended before SIGTERM: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted: the trials in flight were enqueued again" in err
    proc = _start(study)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    check_searches(study)
