"""``verify``: decode every image of every split of a dataset once and list the bad ones.

:func:`verify_dataset` loads every split of a registered dataset (the four benchmarks from
their data root, ``icons``/``glyphs`` from the cache) and screens all their files through the
one screening path (:func:`dml_study.data.screening.screen_paths`, with its records, so a
second verification of an unchanged dataset decodes nothing). :func:`screen_datasets` does the
same for splits already loaded; the trainer calls it before its first epoch
(:func:`dml_study.training.pipeline.load_datasets`, switch ``data.check_images``).

Command line (through ``python -m dml_study.data``)::

    python -m dml_study.data verify cub200 --root data
    python -m dml_study.data verify icons

prints one line per unreadable file (``path: reason``) and exits with code 3 when there is
any (:data:`dml_study.errors.EXIT_DATA`), 0 when every image decodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import DMLDataset
from .layout import resolve_data_root
from .registry import dataset_info, get_dataset
from .screening import CorruptImagesError, ScreenResult, records_file, screen_paths


@dataclass
class VerifyReport:
    """The outcome of verifying one dataset.

    Attributes:
        dataset: registry name.
        images: number of images per split.
        result: what the screening found (files checked, decoded, bad).
        records: the records file used (``None``: no records).
        fix: how to replace the bad files (appended to the error message).
    """

    dataset: str
    images: dict[str, int]
    result: ScreenResult
    records: Path | None = None
    fix: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def bad(self) -> list:
        return self.result.bad

    def error(self) -> CorruptImagesError:
        """The one-line error naming the bad files and both fixes."""
        return CorruptImagesError(self.dataset, self.result.bad, self.fix)

    def raise_if_bad(self) -> None:
        if not self.ok:
            raise self.error()

    def summary(self) -> str:
        """``"cub200: 11788 images (train 5864, test 5924) decoded ...: all readable"``."""
        splits = ", ".join(f"{s} {n}" for s, n in self.images.items())
        r = self.result
        cached = r.checked - r.decoded
        how = f"{r.decoded} decoded, {cached} unchanged since verified" if cached else (
            f"{r.decoded} decoded")
        state = "all readable" if r.ok else f"{len(r.bad)} unreadable"
        return f"{self.dataset}: {r.checked} images ({splits}; {how}): {state}"


def _fix_for(name: str, data_root: str | os.PathLike[str] | None) -> str:
    info = dataset_info(name)
    if info.kind == "embedded":
        return (f" (rebuild: python -m dml_study.data.{info.embedded} build --force)")
    root = resolve_data_root(data_root)
    return (f" (re-extract the official archives: python -m dml_study.data download {name} "
            f"--root {root} --force)")


def screen_datasets(
    name: str,
    splits: Mapping[str, DMLDataset],
    *,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    records: bool = True,
    data_root: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Screen every file of the loaded ``splits`` of dataset ``name`` in one pass.

    ``records=False`` decodes every file and remembers nothing; otherwise the records are
    ``<cache>/verified/<name>.json`` (``cache_dir`` default: ``$DML_STUDY_CACHE``).
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for ds in splits.values():
        for p in ds.paths:
            if p not in seen:
                seen.add(p)
                paths.append(p)
    record_path = records_file(name, cache_dir) if records else None
    result = screen_paths(paths, records=record_path, progress=progress, desc=f"verify {name}")
    return VerifyReport(name, {s: len(ds) for s, ds in splits.items()}, result, record_path,
                        _fix_for(name, data_root))


def verify_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    records: bool = True,
    **dataset_kw: Any,
) -> VerifyReport:
    """Load every split of ``name`` and decode each of its images once (see the module doc).

    Args:
        data_root: the benchmarks' data root (default ``$DML_DATA_ROOT`` or ``./data``).
        cache_dir: where the records live, and the embedded datasets' cache.
        records: use and update ``<cache>/verified/<name>.json``.
        **dataset_kw: further :func:`~dml_study.data.get_dataset` arguments (``build``,
            ``icon_size``, ``size``, ...).

    Returns:
        The :class:`VerifyReport`; ``report.raise_if_bad()`` raises the one-line
        :class:`~dml_study.data.screening.CorruptImagesError`.
    """
    info = dataset_info(name)
    if info.kind == "embedded" and cache_dir is not None:
        dataset_kw.setdefault("cache_dir", cache_dir)
    splits = {
        split: get_dataset(name, split, data_root, progress=progress, check_images=False,
                           **dataset_kw)
        for split in info.splits
    }
    return screen_datasets(name, splits, progress=progress, cache_dir=cache_dir,
                           records=records, data_root=data_root)


__all__ = ["VerifyReport", "screen_datasets", "verify_dataset"]
