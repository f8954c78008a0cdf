"""A per-run lock: one training process per run directory.

Two processes training the same run name (two notebooks, a double-clicked command, two
launchers) would otherwise both resume from the same checkpoint and leave a directory whose
``config.yaml`` describes one run and whose ``metrics.json`` describes the other. The trainer
therefore holds an exclusive :func:`fcntl.flock` on ``<run_dir>/.lock`` for the run's whole
life (under DDP: rank 0 holds it for the job). The lock file records who holds it
(pid, host, start time, command), so the second process fails at once naming the holder.

Stale locks cannot happen: the operating system releases a ``flock`` when its process dies,
however it dies (``kill -9`` included); the file left behind is just text and is reused.
Reading a finished run (``metrics.json``, ``load_record``) needs no lock.

``flock`` works on local file systems and on NFS (Linux emulates it with POSIX locks since
2.6.12); on platforms without :mod:`fcntl` (Windows) the lock is a no-op with a warning.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from dml_study.training.errors import RunLockedError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def lock_path(run_dir: str | Path) -> Path:
    """The lock file of a run directory."""
    return Path(run_dir) / LOCK_NAME


def read_holder(path: str | Path) -> dict[str, Any]:
    """What the lock file says about its (last) holder; ``{}`` if unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``"pid 123 on host h (started 2026-01-01T10:00:00+00:00: python -m ...)"``."""
    if not holder:
        return "another process (its details are not readable)"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    details = [str(holder[k]) for k in ("started", "command") if holder.get(k)]
    return f"{text} (started {': '.join(details)})" if details else text


class RunLock:
    """Exclusive lock on ``<run_dir>/.lock``; use as a context manager or acquire/release.

    :meth:`acquire` never waits: if another process holds the lock it raises
    :class:`~dml_study.training.errors.RunLockedError` naming that process.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = lock_path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn("no fcntl on this platform: runs are not locked", stacklevel=2)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = describe_holder(read_holder(self.path))
                raise RunLockedError(
                    f"run directory {self.run_dir} is being trained by {holder}; wait for it "
                    "to finish (a finished run is then loaded, not retrained), stop that "
                    "process, or choose another run_name"
                ) from None
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        return self

    def release(self) -> None:
        """Release the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r}, held={self.held})"
