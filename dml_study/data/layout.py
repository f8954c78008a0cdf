"""Locating a benchmark's folder under a data root, with errors that say what is expected."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DatasetLayoutError

DATA_ROOT_ENV = "DML_DATA_ROOT"


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """``data_root`` if given, else ``$DML_DATA_ROOT``, else ``./data``."""
    if data_root is None:
        data_root = os.environ.get(DATA_ROOT_ENV) or "data"
    return Path(data_root).expanduser()


def find_dataset_dir(data_root: Path, folder: str, marker: str, layout: str) -> Path:
    """The dataset folder ``data_root/folder`` that contains ``marker``.

    ``data_root`` may also be the dataset folder itself. When the folder is found one level
    deeper (the user pointed at a parent), the error says which data_root to pass instead.
    """
    if not data_root.exists():
        raise DatasetLayoutError(
            f"data root {data_root} does not exist (set data_root= or ${DATA_ROOT_ENV}). "
            f"Expected layout:\n{layout}"
        )
    for candidate in (data_root / folder, data_root):
        if (candidate / marker).exists():
            return candidate
    if data_root.is_dir():
        for child in sorted(p for p in data_root.iterdir() if p.is_dir()):
            if (child / folder / marker).exists():
                raise DatasetLayoutError(
                    f"{folder} is not directly under data root {data_root}, but was found in "
                    f"{child / folder}: pass data_root={child} instead. Expected layout:\n{layout}"
                )
    raise DatasetLayoutError(
        f"no {folder}/{marker} under data root {data_root}. Expected layout:\n{layout}"
    )


def require_file(path: Path, what: str, layout: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetLayoutError` naming it."""
    if not path.is_file():
        raise DatasetLayoutError(f"missing {what}: {path}. Expected layout:\n{layout}")
    return path
