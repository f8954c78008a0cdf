"""The journal of one search: Optuna's ``JournalStorage`` in a file, safe against kills.

``results/<study>/tuning/<dataset>/<group>.<variant>/journal.log`` is Optuna's journal file
(:class:`optuna.storages.journal.JournalFileBackend`): one JSON operation per line (create a
trial, set a parameter, report a value, finish it), appended under a lock file and fsynced,
replayed by every process that opens it. Several processes may share it: that is how SLURM
workers, or a second ``tune`` started on the same study, run trials of one search in parallel.

What this module adds to Optuna's file backend, for the faults of issue #23:

* **A lock that knows its holder** (:class:`OwnedFileLock`). Optuna's lock file is empty, so
  after a ``kill -9`` inside a journal write the next writer waits out a 30 s grace period.
  This lock file holds ``{host, pid, started}``: a holder on this host that no longer runs
  is broken at once; one on another host after ``grace_period`` seconds without release.
* **A torn last line is cut** (:class:`SafeJournalBackend`). A process killed in the middle
  of its ``write`` (or a write that hit a full disk) leaves a last line without ``\\n``;
  Optuna's reader skips it, but the next append would glue a new record to it and make the
  line undecodable, i.e. break the journal for good. Before each append (under the lock,
  so no live writer is mid-line) a torn tail is truncated; a failing append truncates its
  own partial bytes. The cut record was never acknowledged, so nothing that counted is lost.
* **Trials whose worker is gone** (:func:`recover_stale_trials`). Every trial carries the
  ``worker`` that asked it (:func:`worker_identity`). A RUNNING trial whose worker no
  longer runs (same host: its pid is gone or belongs to another process; other host: its
  heartbeat file is older than :data:`STALE_AFTER_SECONDS`) is set to FAIL and its
  parameters are enqueued again with its ``slot``, so the budget slot it held is trained
  exactly once more: no trial counted twice, none lost.
* **One-line errors** of :mod:`dml_study.errors`: an undecodable journal is a
  :class:`~dml_study.errors.DamagedFileError` (exit 5); a journal append on a full disk is a
  :class:`~dml_study.errors.DiskFullError` naming the journal, the bytes of the record and
  the space free (exit 4), after its partial bytes were cut.

Fault injection for tests (works in subprocesses, no monkeypatching):
``$DML_STUDY_INJECT_JOURNAL_KILL=N`` makes this process's N-th journal append write half
its bytes, then ``SIGKILL`` itself: a kill in the middle of a journal write, on demand.
``$DML_STUDY_INJECT_ENOSPC`` (:mod:`dml_study.atomic_io`'s patterns of paths whose writes
hit a full disk) applies to journal appends too: a matching journal's appends write part of
their record, then fail with ``ENOSPC``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from dml_study.atomic_io import INJECT_ENOSPC_ENV
from dml_study.errors import DamagedFileError, DiskFullError, is_disk_full

#: Seconds between two touches of a worker's heartbeat file.
HEARTBEAT_SECONDS = 30.0
#: A worker (on another host) whose heartbeat is older than this (seconds) is gone.
STALE_AFTER_SECONDS = 600.0
#: Seconds a lock held by a live process on another host is waited for before it is broken.
LOCK_GRACE_SECONDS = 30.0

#: Fault injection: the N-th append of this process writes half its bytes and SIGKILLs it.
INJECT_KILL_ENV = "DML_STUDY_INJECT_JOURNAL_KILL"

#: How a re-run continues after a fault stopped the tune command (its one-line errors).
RESUME_NOTE = ("every search resumes from its journal (trials told so far are kept, the "
               "ones in flight are trained again)")

#: User attributes of every trial.
WORKER_ATTR = "worker"
SLOT_ATTR = "slot"
RETRY_ATTR = "retry_of"


# --------------------------------------------------------------------------- workers


def worker_identity() -> dict[str, Any]:
    """``{host, pid, started}`` of this process (``started``: its start time, so a reused
    pid is not mistaken for the worker)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.Error, OSError):
        return None


def heartbeat_path(directory: Path, worker: dict[str, Any]) -> Path:
    """``<search dir>/workers/<host>-<pid>.json``: touched while the worker runs."""
    return Path(directory) / "workers" / f"{worker['host']}-{worker['pid']}.json"


def worker_alive(worker: dict[str, Any] | None, directory: Path) -> bool:
    """Whether the worker that asked a trial still runs (see the module docstring)."""
    if not worker:
        return False
    if worker.get("host") == socket.gethostname():
        started = _start_time(int(worker["pid"]))
        if started is None:
            return False
        return worker.get("started") is None or abs(started - float(worker["started"])) < 1.0
    try:
        age = time.time() - heartbeat_path(directory, worker).stat().st_mtime
    except OSError:
        return False
    return age < STALE_AFTER_SECONDS


class Heartbeat:
    """This worker's heartbeat file in a search directory, touched from a daemon thread."""

    def __init__(self, directory: Path, every: float = HEARTBEAT_SECONDS) -> None:
        self.worker = worker_identity()
        self.path = heartbeat_path(directory, self.worker)
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.worker), encoding="utf-8")

        def beat() -> None:
            while not self._stop.wait(self.every):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="tune-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.path.unlink()


# --------------------------------------------------------------------------- locking


class OwnedFileLock(BaseJournalFileLock):
    """An ``O_EXCL`` lock file holding its owner; a dead owner's lock is broken at once.

    Same protocol as :class:`optuna.storages.journal.JournalFileOpenLock` (create with
    ``O_CREAT | O_EXCL``, release by rename + unlink, safe on NFS v3+), plus the owner.
    """

    def __init__(self, path: str | Path, grace_period: float = LOCK_GRACE_SECONDS) -> None:
        self.path = Path(path)
        self.grace_period = grace_period

    def holder(self) -> dict[str, Any] | None:
        """The owner recorded in the lock file (``None``: no lock, or not written yet)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self) -> bool:
        sleep, seen_mtime, seen_at = 0.001, None, time.monotonic()
        me = json.dumps(worker_identity()).encode()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    mtime = self.path.stat().st_mtime
                except OSError:
                    continue  # released meanwhile
                if mtime != seen_mtime:
                    seen_mtime, seen_at = mtime, time.monotonic()
                holder = self.holder()
                dead = holder is not None and holder.get("host") == socket.gethostname() \
                    and not worker_alive(holder, self.path.parent)
                if dead or time.monotonic() - seen_at > self.grace_period:
                    self._break()
                    sleep = 0.001
                    continue
                time.sleep(sleep)
                sleep = min(sleep * 2, 0.25)
                continue
            try:
                os.write(fd, me)
            except OSError as exc:  # a full disk: leave no ownerless lock behind
                os.close(fd)
                self.path.unlink(missing_ok=True)
                if not exc.filename:
                    exc.filename = str(self.path)
                raise
            os.close(fd)
            return True

    def _break(self) -> None:
        with contextlib.suppress(OSError):
            self.release()

    def release(self) -> None:
        moved = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.released")
        try:
            os.rename(self.path, moved)
        except OSError as exc:
            raise RuntimeError(f"lock {self.path} was not held") from exc
        moved.unlink(missing_ok=True)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """``with lock.held(): ...``"""
        self.acquire()
        try:
            yield
        finally:
            with contextlib.suppress(RuntimeError):
                self.release()


# --------------------------------------------------------------------------- the journal


class SafeJournalBackend(JournalFileBackend):
    """Optuna's file backend with the owned lock and torn-line repair (module docstring)."""

    def __init__(self, file_path: str | Path) -> None:
        self.lock = OwnedFileLock(f"{file_path}.lock")
        super().__init__(str(file_path), lock_obj=self.lock)
        #: Bytes cut from a torn last line by this process (for messages and tests).
        self.repaired_bytes = 0
        self._appends = 0
        self._kill_at = int(os.environ.get(INJECT_KILL_ENV, "0") or 0)
        self._full = _inject_enospc(Path(file_path))

    def repair(self) -> int:
        """Cut a torn last line (under the lock); the bytes removed."""
        with self.lock.held():
            return self._cut_torn_tail()

    def _cut_torn_tail(self) -> int:
        with open(self._file_path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            keep = _last_newline_end(fh, size)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        self.repaired_bytes += size - keep
        return size - keep

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs)
                + "\n").encode("utf-8")
        with self.lock.held():
            self._cut_torn_tail()
            self._appends += 1
            with open(self._file_path, "ab") as fh:
                start = fh.tell()
                if self._appends == self._kill_at:
                    _torn_write_then_die(fh, data)
                try:
                    if self._full:
                        _injected_full_disk(fh, data)
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException as exc:
                    with contextlib.suppress(OSError):
                        fh.truncate(start)  # no half record left behind (ENOSPC, ...)
                    if isinstance(exc, Exception) and is_disk_full(exc):
                        raise DiskFullError(self._file_path, needed=len(data),
                                            resume=RESUME_NOTE, note=_injected_note(
                                                self._full)) from exc
                    if isinstance(exc, OSError) and not exc.filename:
                        exc.filename = str(self._file_path)
                    raise


def _inject_enospc(path: Path) -> bool:
    """Whether ``$DML_STUDY_INJECT_ENOSPC`` names ``path`` (fnmatch on the path or its name,
    as :mod:`dml_study.atomic_io` matches it)."""
    patterns = [p.strip() for p in os.environ.get(INJECT_ENOSPC_ENV, "").split(",") if p.strip()]
    return any(fnmatch.fnmatch(str(path), p) or fnmatch.fnmatch(path.name, p) for p in patterns)


def _injected_full_disk(fh: Any, data: bytes) -> None:
    """Write part of ``data`` and fail like a full disk (fault injection)."""
    fh.write(data[: max(1, len(data) // 2)])
    fh.flush()
    raise OSError(errno.ENOSPC, f"No space left on device (injected by ${INJECT_ENOSPC_ENV})")


def _injected_note(injected: bool) -> str:
    return f"injected by ${INJECT_ENOSPC_ENV}" if injected else ""


def _torn_write_then_die(fh: Any, data: bytes) -> None:
    """Write half of ``data``, flush it to disk, and SIGKILL this process (fault injection)."""
    import signal

    fh.write(data[: max(1, len(data) // 2)])
    fh.flush()
    os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _last_newline_end(fh: Any, size: int, chunk: int = 65536) -> int:
    """Offset just past the last ``\\n`` before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        block = fh.read(end - start)
        at = block.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def open_storage(path: str | Path) -> JournalStorage:
    """The journal storage of ``path`` (created if missing, a torn tail cut).

    Raises :class:`~dml_study.errors.DamagedFileError` (exit 5) for a journal with an
    undecodable line in the middle (not something a kill leaves: the file was edited or the
    disk damaged it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = SafeJournalBackend(path)
    backend.repair()
    try:
        return JournalStorage(backend)
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedFileError(
            f"tuning journal {path} cannot be replayed ({type(exc).__name__}: {exc}); restore "
            f"it from version control (git checkout -- {path}) or move it away to start this "
            "search afresh"
        ) from exc


# --------------------------------------------------------------------------- stale trials


def recover_stale_trials(
    study: optuna.Study, storage: JournalStorage, directory: Path, *, ask_lock_held: bool
) -> list[FrozenTrial]:
    """FAIL every RUNNING trial whose worker is gone and enqueue its parameters again.

    The re-enqueued trial keeps the ``slot`` of the failed one (and records ``retry_of``),
    so it takes that trial's place in the budget. A RUNNING trial without a ``worker`` was
    asked by a process that died before recording itself: that can only be seen while the
    ask lock is held (``ask_lock_held``), when no live asker is between the two. Returns the
    trials failed, in number order.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker is None and not ask_lock_held:
            continue
        if worker is not None and worker_alive(worker, directory):
            continue
        stale.append(trial)
    failed = []
    for trial in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another worker recovered it
        failed.append(trial)
        attrs = {RETRY_ATTR: trial.number}
        if SLOT_ATTR in trial.user_attrs:
            attrs[SLOT_ATTR] = trial.user_attrs[SLOT_ATTR]
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return failed

