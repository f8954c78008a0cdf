"""Claim files: one launcher at a time trains a run, across processes, launchers and hosts.

Before a launcher's worker trains run ``R`` it creates ``<results>/runs/.claims/R.json``
with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file systems), holding who claimed it:
process id, host, launcher, SLURM job id. A second launcher on the same study (or another
study sharing the run) finds the claim and leaves the run alone. While training, the
holder touches the file every ``HEARTBEAT_SECONDS``; the claim is released (deleted) when
the run ends, successfully or not.

A claim is *stale*, and may be taken over, when its holder is gone:

- it was made on this host and its process no longer exists, or
- its heartbeat is older than ``stale_after`` seconds (a holder on another host that died
  without cleaning up, e.g. a node that crashed).

A requeued SLURM job re-claims its own run: a claim carrying the same job id is its own.
This is the launcher-level guard; the trainer additionally locks its run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: Seconds between two touches of a held claim.
HEARTBEAT_SECONDS = 30.0
#: A claim whose heartbeat is older than this (seconds) is stale.
STALE_AFTER_SECONDS = 600.0


def claims_dir(results_dir: Path) -> Path:
    """``<results_dir>/runs/.claims``: claims live beside the run directories they guard."""
    return Path(results_dir) / "runs" / ".claims"


def claim_path(results_dir: Path, run_name: str) -> Path:
    """The claim file of one run."""
    return claims_dir(results_dir) / f"{run_name}.json"


@dataclass(frozen=True)
class ClaimInfo:
    """Who holds a run."""

    run_name: str
    pid: int
    host: str
    launcher: str
    job_id: str | None
    claimed_at: float

    def describe(self) -> str:
        job = f", job {self.job_id}" if self.job_id else ""
        return f"{self.launcher} pid {self.pid} on {self.host}{job}"


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim at ``path`` (``None``: no claim, or a half-written one being created)."""
    try:
        return ClaimInfo(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def is_stale(path: Path, info: ClaimInfo | None, stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """True when the claim's holder is gone (see the module docstring)."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return True
    if info is None:  # unreadable: being written right now, or garbage left by a crash
        return age > stale_after
    if info.host == socket.gethostname() and not _pid_alive(info.pid):
        return True
    return age > stale_after


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Claim:
    """A held claim; release it with :meth:`release` (or use it as a context manager)."""

    def __init__(self, path: Path, info: ClaimInfo) -> None:
        self.path = path
        self.info = info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> Claim:
        """Touch the claim file every ``every`` seconds from a daemon thread."""
        def beat() -> None:
            while not self._stop.wait(every):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name=f"claim-{self.info.run_name}",
                                        daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the claim file (if it is still ours)."""
        self._stop.set()
        current = read_claim(self.path)
        if current is not None and (current.pid, current.host) == (self.info.pid, self.info.host):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_claim(
    results_dir: Path,
    run_name: str,
    *,
    launcher: str,
    job_id: str | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
) -> Claim | ClaimInfo:
    """Claim ``run_name``: a :class:`Claim` on success, else the holder's :class:`ClaimInfo`.

    A stale claim, or one made by the same SLURM job (a requeued job), is taken over.
    """
    path = claim_path(results_dir, run_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = ClaimInfo(run_name, os.getpid(), socket.gethostname(), launcher, job_id, time.time())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_claim(path)
            own_job = job_id is not None and holder is not None and holder.job_id == job_id
            if own_job or is_stale(path, holder, stale_after):
                path.unlink(missing_ok=True)
                continue  # race for the freed claim like everyone else
            return holder if holder is not None else ClaimInfo(
                run_name, -1, "?", "unknown", None, path.stat().st_mtime)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(info), handle)
        return Claim(path, info)
    holder = read_claim(path)
    return holder or ClaimInfo(run_name, -1, "?", "unknown", None, time.time())


def live_claim(results_dir: Path, run_name: str,
               stale_after: float = STALE_AFTER_SECONDS) -> ClaimInfo | None:
    """The holder of ``run_name`` if its claim is live, else ``None``."""
    path = claim_path(results_dir, run_name)
    if not path.is_file():
        return None
    info = read_claim(path)
    return None if is_stale(path, info, stale_after) else info
