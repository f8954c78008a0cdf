"""Atomic file writes: a killed process never leaves a half-written result behind.

Each writer fills a temporary sibling of the target (same directory, so the final
:func:`os.replace` is a rename within one file system), flushes it to disk and renames it into
place, then syncs the directory so the rename itself survives a power cut. Used for
everything a run or a study writes: configs, histories, metrics, checkpoints, reports.

A write that fails removes its temporary file, so nothing half-written is left and the
previous version of the target (if any) is untouched. A full disk (``ENOSPC``/``EDQUOT``,
including torch's ``enforce fail ... unexpected pos`` that hides it) is raised as
:class:`dml_study.errors.DiskFullError`: the target, the bytes it needs (measured by running
the writer again into a byte counter, which writes nothing) and the bytes free on its mount.

``keep_previous`` rotates: the old target becomes ``keep_previous`` in the same step (see
:func:`atomic_write_with`); the checkpoints use it for ``last.pt`` → ``prev.pt``.

Fault injection for tests (no monkeypatching, works in subprocesses and without root):
``$DML_STUDY_INJECT_ENOSPC`` holds comma-separated :mod:`fnmatch` patterns; a write whose
target path matches one fails with ``ENOSPC`` after writing part of its data, as a full disk
would.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dml_study.errors import DiskFullError, is_disk_full, is_torch_short_write

#: Permissions of written files. ``mkstemp`` creates files readable by their owner only;
#: results are meant to be shared (served, copied, read by other users), so they are made
#: world-readable like any file written with ``open()`` under the usual umask.
FILE_MODE = 0o644

#: Comma-separated fnmatch patterns of target paths whose writes fail with ``ENOSPC``.
INJECT_ENOSPC_ENV = "DML_STUDY_INJECT_ENOSPC"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(
    path: str | Path,
    writer: Callable[[Any], Any],
    *,
    keep_previous: str | Path | None = None,
) -> None:
    """Call ``writer(binary_file_handle)`` on a temp file and atomically move it to ``path``.

    Steps: write the temp file, flush, ``fsync``; if ``keep_previous`` is given and ``path``
    exists, rename ``path`` → ``keep_previous``; rename temp → ``path``; ``fsync`` the
    directory. A kill between any two steps leaves complete files only: before the first
    rename the old ``path`` and ``keep_previous`` are untouched (the finished temp file is an
    orphan, removed by :meth:`~dml_study.training.run_dir.RunDirectory.prepare`); between
    the renames ``path`` is absent and ``keep_previous`` holds its old content (a reader
    falls back to it); after the second rename both are in place. ``writer`` must be
    callable again with the same result (it is re-run into a byte counter to measure the
    size needed when the disk is full).

    Raises :class:`~dml_study.errors.DiskFullError` on a full disk; the temp file is
    removed on any failure.
    """
    path = Path(path)
    tmp: str | None = None
    injected = _inject_enospc(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            writer(_InjectedFullDisk(fh, path) if injected else fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        tmp = None
        fsync_directory(path.parent)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and (
            is_disk_full(exc) or (is_torch_short_write(exc) and _nearly_full(path))
        ):
            raise DiskFullError.from_exception(
                exc, path=path, needed=measure_written_bytes(writer, path),
                note=f"injected by ${INJECT_ENOSPC_ENV}" if injected else "",
            ) from exc
        raise


def fsync_directory(directory: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) cannot fsync a directory
    finally:
        os.close(fd)


class _ByteCounter(io.RawIOBase):
    """A write-only, non-seekable sink that counts the bytes written to it."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.count += n
        return n

    def tell(self) -> int:
        return self.count


def measure_written_bytes(writer: Callable[[Any], Any], path: str | Path | None = None) -> int:
    """How many bytes ``writer`` writes (run into a counter; nothing touches the disk).

    Falls back to the size of the existing ``path`` (the previous version of the same file)
    when the writer cannot run twice; 0 when neither is known.
    """
    counter = _ByteCounter()
    try:
        writer(counter)
        return counter.count
    except Exception:
        try:
            return Path(path).stat().st_size if path is not None else 0
        except OSError:
            return 0


def _nearly_full(path: Path) -> bool:
    """Whether the file system of ``path`` has under 1 % (or under 16 MB) free."""
    try:
        usage = os.statvfs(path.parent)
    except OSError:
        return False
    free = usage.f_bavail * usage.f_frsize
    return free < max(16e6, 0.01 * usage.f_blocks * usage.f_frsize)


def _inject_enospc(path: Path) -> bool:
    patterns = [p.strip() for p in os.environ.get(INJECT_ENOSPC_ENV, "").split(",") if p.strip()]
    return any(fnmatch.fnmatch(str(path), p) or fnmatch.fnmatch(path.name, p) for p in patterns)


class _InjectedFullDisk:
    """A file handle that writes the first 512 bytes, then fails like a full disk."""

    BUDGET = 512

    def __init__(self, fh: Any, path: Path):
        self._fh, self._path, self._left = fh, path, self.BUDGET

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self._left:
            self._fh.write(view[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, f"No space left on device (injected by "
                                        f"${INJECT_ENOSPC_ENV} for {self._path.name})")
        self._left -= len(view)
        return self._fh.write(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy scalars/arrays and paths converted) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Records → CSV with the union of their keys as columns (first-seen order)."""
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in columns})
    atomic_write_text(path, buf.getvalue())
