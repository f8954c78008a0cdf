"""The dataset registry: ``get_dataset(name, split)`` and per-dataset evaluation protocol."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from . import cars, cub, inshop, sop
from .base import DMLDataset, SplitRecords, check_expected_size, make_dataset
from .layout import resolve_data_root
from .splits import check_test_split_allowed

DEFAULT_DATASET = "icons"


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one benchmark.

    Attributes:
        name: registry key.
        splits: valid split names.
        protocol: ``"self"`` (every test image queries all others) or ``"query_gallery"``.
        recall_ks: the Recall@K values reported in the literature for this benchmark.
        expected: published ``(images, classes)`` per split (``None`` = no fixed size).
        source_url: where users download it.
        layout: the expected on-disk tree.
        embedded: for datasets built locally on first use, the module of
            ``dml_study.data`` that builds them; its ``load_records(split, **kw)`` gets the
            keyword arguments of :func:`get_dataset` that are not common ones.
    """

    name: str
    splits: tuple[str, ...]
    protocol: str
    recall_ks: tuple[int, ...]
    expected: dict[str, tuple[int, int]] | None
    source_url: str
    layout: str
    embedded: str | None = None

    @property
    def kind(self) -> str:
        """``"benchmark"`` (a published benchmark on disk) or ``"embedded"`` (built locally)."""
        return "embedded" if self.embedded is not None else "benchmark"


#: Values of :attr:`DatasetInfo.kind`.
DATASET_KINDS: tuple[str, ...] = ("benchmark", "embedded")


DATASETS: dict[str, DatasetInfo] = {
    "cub200": DatasetInfo(
        "cub200", ("train", "test"), "self", (1, 2, 4, 8, 16, 32), cub.EXPECTED,
        cub.SOURCE_URL, cub.LAYOUT,
    ),
    "cars196": DatasetInfo(
        "cars196", ("train", "test"), "self", (1, 2, 4, 8, 16, 32), cars.EXPECTED,
        cars.SOURCE_URL, cars.LAYOUT,
    ),
    "sop": DatasetInfo(
        "sop", ("train", "test"), "self", (1, 10, 100, 1000), sop.EXPECTED,
        sop.SOURCE_URL, sop.LAYOUT,
    ),
    "inshop": DatasetInfo(
        "inshop", ("train", "query", "gallery"), "query_gallery", (1, 10, 20, 30, 40),
        inshop.EXPECTED, inshop.SOURCE_URL, inshop.LAYOUT,
    ),
}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to :data:`DATASETS` (``get_dataset(info.name, ...)`` then loads it)."""
    if info.name in DATASETS:
        raise ValueError(f"dataset {info.name!r} is already registered")
    DATASETS[info.name] = info
    return info


def register_embedded(name: str, recall_ks: tuple[int, ...], source: str) -> DatasetInfo:
    """Register an embedded dataset built by ``dml_study.data.<name>`` into the cache dir."""
    return register_dataset(DatasetInfo(
        name, ("train", "test"), "self", recall_ks, None,
        f"{source} (built locally, see dml_study.data.{name})",
        f"~/.cache/dml_study/{name}-<size>/ (built on first use; $DML_STUDY_CACHE overrides)",
        embedded=name,
    ))


# The embedded datasets: registered here by name only, so importing dml_study.data does not
# import their builders (``python -m dml_study.data.<name>`` would otherwise warn).
register_embedded("icons", (1, 2, 4, 8), "Debian *-icon-theme packages")
register_embedded("glyphs", (1, 2, 4, 8, 16, 32),
                  "Debian CJK font packages and Unihan (unicode-data)")

# Keyword arguments consumed by make_dataset (the rest go to the dataset-specific loader).
_COMMON_KW = ("on_corrupt", "check_images", "cache_decoded", "cache_size", "progress")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; unknown names raise listing the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}") from None


def list_datasets(kind: str | None = None) -> list[str]:
    """Registered dataset names in registration order, optionally only those of ``kind``.

    ``kind="benchmark"`` gives the four published benchmarks (cub200, cars196, sop, inshop),
    ``kind="embedded"`` the datasets built locally (icons, glyphs); see :attr:`DatasetInfo.kind`.
    """
    if kind is not None and kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid: {list(DATASET_KINDS)}")
    return [name for name, info in DATASETS.items() if kind is None or info.kind == kind]


def is_dataset(name: object) -> bool:
    """Whether ``name`` is a registered dataset."""
    return name in DATASETS


def dataset_protocol(name: str) -> str:
    """``"self"`` (leave-one-out retrieval on test) or ``"query_gallery"`` (In-Shop)."""
    return dataset_info(name).protocol


def default_recall_ks(name: str) -> tuple[int, ...]:
    """The Recall@K cut-offs the literature reports for ``name``."""
    return dataset_info(name).recall_ks


def _check_split(info: DatasetInfo, split: str) -> None:
    if split in info.splits:
        return
    hint = ""
    if info.name == "inshop" and split == "test":
        hint = " (In-Shop is evaluated as query vs gallery: load split='query' and 'gallery')"
    raise ValueError(f"unknown split {split!r} for {info.name}; valid: {list(info.splits)}{hint}")


def _records(
    name: str, split: str, data_root: Path, kw: dict[str, Any]
) -> tuple[SplitRecords, list | None]:
    loaders: dict[str, Callable[[Path, str], SplitRecords]] = {
        "cub200": cub.load_records,
        "cars196": cars.load_records,
        "sop": sop.load_records,
    }
    info = dataset_info(name)
    if info.embedded is not None:  # lazily: only an embedded dataset needs its builder
        module = importlib.import_module(f"{__package__}.{info.embedded}")
        return module.load_records(split, **kw), None
    if name in loaders:
        return loaders[name](data_root, split), None
    records, space = inshop.load_records(data_root, split)
    return records, (space if split != "train" else None)


def get_dataset(
    name: str,
    split: str,
    data_root: str | os.PathLike[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    **kw: Any,
) -> DMLDataset:
    """Load split ``split`` of dataset ``name`` as a :class:`DMLDataset`.

    Args:
        name: one of :data:`DATASETS` (``"cub200"``, ``"cars196"``, ``"sop"``, ``"inshop"``,
            and the embedded ``"icons"`` and ``"glyphs"``).
        split: ``"train"``/``"test"``; In-Shop uses ``"train"``/``"query"``/``"gallery"``.
        data_root: folder holding the benchmark folders (default ``$DML_DATA_ROOT`` or
            ``./data``). Ignored for embedded datasets, which live in the cache dir and are
            built on first use.
        transform: applied to each RGB PIL image.
        **kw: ``on_corrupt`` (``"raise"``/``"skip"``), ``check_images``, ``cache_decoded``,
            ``cache_size`` (shorter side, default 256), ``progress``; embedded datasets also
            take their loader's arguments: ``cache_dir`` and ``build`` for both, ``icon_size``
            for ``"icons"``, ``size`` and ``num_classes`` for ``"glyphs"``.

    Raises :class:`~dml_study.data.splits.TestSplitForbiddenError` for any split but
    ``"train"`` under the test-split guard (:func:`dml_study.data.splits.forbid_test_split`,
    ``$DML_STUDY_FORBID_TEST=1``), before anything of that split is listed or read.
    """
    info = dataset_info(name)
    _check_split(info, split)
    if split != "train":
        check_test_split_allowed(f"the {split!r} split of dataset {name!r}")
    common = {k: kw.pop(k) for k in _COMMON_KW if k in kw}
    if info.embedded is None and kw:
        raise TypeError(f"unexpected keyword(s) for {name}: {sorted(kw)}")
    if info.embedded is not None:
        kw.setdefault("progress", common.get("progress", True))
    records, label_space = _records(name, split, resolve_data_root(data_root), kw)
    ds = make_dataset(name, split, records, transform=transform, label_space=label_space, **common)
    if info.expected is not None:
        check_expected_size(name, split, len(ds), len(set(ds.labels.tolist())),
                            info.expected.get(split))
    return ds
