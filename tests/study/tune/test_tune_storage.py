"""The journal: torn lines cut, failing appends undone, locks of dead holders broken."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest

from dml_study.errors import DamagedFileError, DiskFullError
from dml_study.study.tune.storage import (
    OwnedFileLock,
    SafeJournalBackend,
    open_storage,
    worker_alive,
    worker_identity,
)


def _journal_with_trials(path, n=2):
    storage = open_storage(path)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for i in range(n):
        study.tell(study.ask(), float(i))
    return path.read_bytes()


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "journal.log"
    good = _journal_with_trials(path)
    path.write_bytes(good + b'{"op_code":4,"worker_id":"x","trial_id":')  # a kill mid-write
    # Optuna's own backend would glue the next record to the torn one: the journal breaks.
    glued = tmp_path / "glued.log"
    glued.write_bytes(path.read_bytes())
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(glued)))
    with pytest.raises(AttributeError):  # its new trial is glued to the torn line: lost
        optuna.load_study(study_name="s", storage=plain).ask()
    # Ours cuts it, keeps every acknowledged record, and stays readable.
    storage = open_storage(path)
    assert path.read_bytes() == good
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.ask(), 5.0)
    trials = optuna.load_study(study_name="s", storage=open_storage(path)).get_trials()
    assert [t.value for t in trials] == [0.0, 1.0, 5.0]


def test_a_failing_append_leaves_no_partial_record(tmp_path, monkeypatch):
    path = tmp_path / "journal.log"
    good = _journal_with_trials(path)
    backend = SafeJournalBackend(path)
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    log = {"op_code": 0, "worker_id": "w", "study_name": "t", "directions": [1]}
    with pytest.raises(DiskFullError) as caught:
        backend.append_logs([log])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == good
    assert not (tmp_path / "journal.log.lock").exists()
    # the shared one-line error: the journal, the record's size, how a re-run continues
    size = len(json.dumps(log, separators=(",", ":"))) + 1
    assert caught.value.errno == errno.ENOSPC and caught.value.path == path
    assert str(caught.value).startswith(f"disk full writing {path}: needs ~{size} B, ")
    assert "every search resumes from its journal" in str(caught.value)


def test_injected_enospc_applies_to_journal_appends(tmp_path, monkeypatch):
    path = tmp_path / "journal.log"
    good = _journal_with_trials(path)
    monkeypatch.setenv("DML_STUDY_INJECT_ENOSPC", "*/journal.log")
    backend = SafeJournalBackend(path)
    with pytest.raises(DiskFullError, match=r"injected by \$DML_STUDY_INJECT_ENOSPC"):
        backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "t",
                              "directions": [1]}])
    assert path.read_bytes() == good  # its partial bytes were cut
    monkeypatch.setenv("DML_STUDY_INJECT_ENOSPC", "other.log")
    SafeJournalBackend(path).append_logs([{"op_code": 0, "worker_id": "w",
                                           "study_name": "t", "directions": [1]}])
    assert path.read_bytes().startswith(good) and path.read_bytes() != good


def test_a_lock_that_cannot_be_written_leaves_no_ownerless_lock(tmp_path, monkeypatch):
    lock = OwnedFileLock(tmp_path / "journal.log.lock")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as caught:
        lock.acquire()
    assert caught.value.filename == str(lock.path) and not lock.path.exists()


def test_a_journal_damaged_in_the_middle_is_a_one_line_error(tmp_path):
    path = tmp_path / "journal.log"
    good = _journal_with_trials(path).splitlines(keepends=True)
    path.write_bytes(good[0] + b"garbage\n" + b"".join(good[1:]))
    with pytest.raises(DamagedFileError, match=r"cannot be replayed.*git checkout --"):
        open_storage(path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_of_a_dead_holder_is_broken_at_once(tmp_path):
    lock = OwnedFileLock(tmp_path / "x.lock", grace_period=60)
    (tmp_path / "x.lock").write_text(json.dumps({"host": socket.gethostname(),
                                                 "pid": _dead_pid(), "started": 1.0}))
    began = time.monotonic()
    with lock.held():
        assert lock.holder()["pid"] == os.getpid()
    assert time.monotonic() - began < 5
    assert not (tmp_path / "x.lock").exists()


def test_a_live_holder_is_waited_for_until_the_grace_period(tmp_path):
    holder = OwnedFileLock(tmp_path / "x.lock")
    holder.acquire()
    waiter = OwnedFileLock(tmp_path / "x.lock", grace_period=1.0)
    began = time.monotonic()
    waiter.acquire()  # a holder that never releases: broken after the grace period
    assert 0.9 < time.monotonic() - began < 10
    waiter.release()


def test_worker_liveness():
    me = worker_identity()
    assert worker_alive(me, "/nonexistent")
    assert not worker_alive({**me, "pid": _dead_pid()}, "/nonexistent")
    assert not worker_alive({**me, "started": me["started"] - 1000}, "/nonexistent")  # reused pid
    assert not worker_alive({"host": "elsewhere", "pid": 1}, "/nonexistent")  # no heartbeat
    assert not worker_alive(None, "/nonexistent")
