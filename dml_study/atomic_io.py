"""Atomic file writes: a killed process never leaves a half-written result behind.

Each writer fills a temporary sibling of the target (same directory, so the final
:func:`os.replace` is a rename within one file system), flushes it to disk and renames it into
place. Used for everything a run or a study writes: configs, histories, metrics, checkpoints,
reports.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Permissions of written files. ``mkstemp`` creates files readable by their owner only;
#: results are meant to be shared (served, copied, read by other users), so they are made
#: world-readable like any file written with ``open()`` under the usual umask.
FILE_MODE = 0o644


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path: str | Path, writer: Callable[[Any], Any]) -> None:
    """Call ``writer(binary_file_handle)`` on a temp file and atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
