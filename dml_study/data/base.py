"""The common dataset type of every DML benchmark: :class:`DMLDataset`.

A loader for a specific benchmark only has to produce :class:`SplitRecords` (image paths,
raw class ids, class names); :func:`make_dataset` turns them into a dataset with 0-based
contiguous labels, optional corrupt-image screening and an optional decoded-image cache.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

from .cache import DecodedImageCache
from .images import load_rgb
from .screening import CorruptImagesError, records_file, screen_paths

ON_CORRUPT_CHOICES = ("raise", "skip")


class EmbeddedBuildError(RuntimeError):
    """An embedded dataset (``icons``, ``glyphs``) can be neither built nor read from the cache.

    Defined here rather than in :mod:`dml_study.data.embedded` so that importing the package
    does not import a builder (``python -m dml_study.data.icons`` would otherwise warn).
    """


#: The former name, kept for code written against the icons-only builder.
IconBuildError = EmbeddedBuildError


class DatasetLayoutError(FileNotFoundError):
    """A data root, metadata file or folder does not match the official layout."""


class DatasetSizeWarning(UserWarning):
    """A full dataset was found but its size differs from the published one."""


@dataclass
class SplitRecords:
    """What a benchmark loader produces for one split, before relabelling.

    Attributes:
        paths: absolute image paths.
        class_ids: raw class id per image (any sortable hashable, e.g. the official 1-based id).
        class_names: human-readable name per raw class id (used as the text modality).
        raw_class_names: optional machine name per raw class id (``001.Black_footed_Albatross``).
        display_names: optional unique name per raw class id for figures and tables
            (``loquat (枇)``); default: see :func:`unique_display_names`.
    """

    paths: list[Path]
    class_ids: list[Hashable]
    class_names: Mapping[Hashable, str]
    raw_class_names: Mapping[Hashable, str] = field(default_factory=dict)
    display_names: Mapping[Hashable, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.class_ids):
            raise ValueError(
                f"{len(self.paths)} paths but {len(self.class_ids)} class ids; they must pair up"
            )


def unique_display_names(
    class_names: Sequence[str],
    raw_class_names: Sequence[str] | None = None,
    display_names: Sequence[str] | None = None,
) -> list[str]:
    """One distinct name per class, for figures and tables.

    ``display_names`` when given (a dataset's own choice, e.g. glyphs' ``loquat (枇)``),
    else ``class_names``; a name that still occurs more than once is disambiguated by
    appending the class's raw name in parentheses (``bicycle (bicycle_final/111085)``),
    and, should that repeat too, its label (``#3``). ``class_names`` themselves are never
    changed: they are the text the adaptive-margin loss embeds, and two classes sharing a
    gloss legitimately share a text embedding.
    """
    names = list(display_names) if display_names is not None else list(class_names)
    raw = list(raw_class_names) if raw_class_names is not None else list(class_names)
    if len(names) != len(class_names) or len(raw) != len(class_names):
        raise ValueError(
            f"{len(class_names)} classes but {len(names)} display names and {len(raw)} raw "
            "names; give one per class"
        )
    for suffix in (lambda i: raw[i], lambda i: f"#{i}"):
        counts = Counter(names)
        if len(counts) == len(names):
            break
        names = [f"{n} ({suffix(i)})" if counts[n] > 1 else n for i, n in enumerate(names)]
    return names


class DMLDataset(torch.utils.data.Dataset):
    """Images with 0-based contiguous labels and class names.

    Attributes:
        name: dataset name (registry key).
        split: ``"train"``, ``"test"``, ``"query"`` or ``"gallery"``.
        paths: image path per index.
        labels: ``int64`` array of labels in ``[0, num_classes)``; every label occurs.
        class_names: human-readable name per label: the text modality, exactly what the
            adaptive-margin loss embeds (not necessarily unique: two glyph characters can
            share a gloss, SOP classes share their super-class name).
        raw_class_names: machine/official name per label.
        display_names: a *unique* name per label for figures, tables and galleries
            (:func:`unique_display_names`).
        transform: applied to the RGB PIL image in ``__getitem__`` (settable).
        cache: optional :class:`DecodedImageCache` serving resized decoded images.
    """

    def __init__(
        self,
        name: str,
        split: str,
        paths: Sequence[Path],
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        raw_class_names: Sequence[str] | None = None,
        cache: DecodedImageCache | None = None,
        require_all_classes: bool = True,
        display_names: Sequence[str] | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.name = name
        self.split = split
        self.paths = [Path(p) for p in paths]
        self.labels = labels
        self.class_names = list(class_names)
        self.raw_class_names = list(raw_class_names or class_names)
        self.display_names = unique_display_names(
            self.class_names, self.raw_class_names, display_names
        )
        self.transform = transform
        self.cache = cache
        present = np.unique(labels)
        if len(labels) and (present[0] < 0 or present[-1] >= len(self.class_names)):
            raise ValueError(f"labels of {name}/{split} fall outside [0, {len(class_names)})")
        if require_all_classes and not np.array_equal(present, np.arange(len(self.class_names))):
            raise ValueError(
                f"labels of {name}/{split} must be 0..{len(self.class_names) - 1} with every "
                f"class present; got {len(present)} distinct labels"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, i: int) -> Image.Image:
        """The RGB image at index ``i`` (from the decoded cache when one is attached)."""
        if self.cache is not None:
            return self.cache.get(i)
        return load_rgb(self.paths[i])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])

    def subset(
        self, indices: Sequence[int] | np.ndarray, classes: Sequence[int] | np.ndarray,
        split: str | None = None,
    ) -> DMLDataset:
        """The images at ``indices`` as a dataset over the classes ``classes``.

        ``classes`` are labels of this dataset, sorted; label ``classes[j]`` becomes ``j``
        and the class names (text modality) follow in the same order, so a loss that
        embeds class names sees the names of the new labels. Every image of ``indices``
        must belong to one of ``classes`` and every class must keep an image. A decoded
        cache is subset with the images (no decoding). ``split`` renames the split.
        """
        from .splits import relabel

        indices = np.asarray(indices, dtype=np.int64)
        classes = np.asarray(classes, dtype=np.int64)
        if len(classes) > 1 and np.any(np.diff(classes) <= 0):
            raise ValueError("subset classes must be sorted and distinct")
        labels = relabel(self.labels[indices], classes)
        cache = None
        if self.cache is not None:
            cache = DecodedImageCache([self.cache.arrays[i] for i in indices], self.cache.size)
        return DMLDataset(
            self.name, split or self.split, [self.paths[i] for i in indices], labels,
            [self.class_names[c] for c in classes], transform=self.transform,
            raw_class_names=[self.raw_class_names[c] for c in classes], cache=cache,
            display_names=[self.display_names[c] for c in classes],
        )

    def enable_decoded_cache(
        self, size: int | None = 256, num_threads: int = 2, progress: bool = True
    ) -> DecodedImageCache:
        """Decode every image once (shorter side resized to ``size``) and serve it from memory."""
        self.cache = DecodedImageCache.build(
            self.paths,
            size=size,
            num_threads=num_threads,
            progress=progress,
            desc=f"decode {self.name}/{self.split}",
        )
        return self.cache

    def __repr__(self) -> str:
        return (
            f"DMLDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


def screen_images(
    paths: Sequence[Path],
    on_corrupt: str,
    progress: bool,
    desc: str,
    records: Path | None = None,
    dataset: str = "dataset",
) -> list[bool]:
    """Which images decode (:func:`~dml_study.data.screening.screen_paths`, the one
    screening path). Every file is decoded once (or answered by ``records``); with
    ``on_corrupt="raise"`` a :class:`~dml_study.data.screening.CorruptImagesError` names
    *all* the bad files at once, with ``"skip"`` each is dropped with a warning."""
    if on_corrupt not in ON_CORRUPT_CHOICES:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT_CHOICES}, got {on_corrupt!r}")
    result = screen_paths(paths, records=records, progress=progress, desc=desc)
    if result.bad and on_corrupt == "raise":
        raise CorruptImagesError(dataset, result.bad)
    for bad in result.bad:
        warnings.warn(f"skipping corrupt image: {bad}", stacklevel=3)
    dropped = {b.path for b in result.bad}
    return [Path(p) not in dropped for p in paths]


def _require_files(name: str, split: str, paths: Sequence[Path]) -> None:
    """Raise :class:`DatasetLayoutError` naming (some of) the listed files that are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DatasetLayoutError(
            f"{name}/{split}: {len(missing)} image file(s) listed in the metadata do not "
            f"exist, e.g. {shown}"
        )


def _relabel(
    class_ids: Sequence[Hashable], label_space: Sequence[Hashable], records: SplitRecords
) -> tuple[np.ndarray, list[str], list[str], list[str] | None]:
    """Labels (position of each class id in ``label_space``), class names, raw names and
    the records' display names (``None`` when the loader gives none)."""
    index = {cid: i for i, cid in enumerate(label_space)}
    labels = np.array([index[c] for c in class_ids], dtype=np.int64)
    names = [records.class_names[c] for c in label_space]
    raw = [records.raw_class_names.get(c, records.class_names[c]) for c in label_space]
    display = None
    if records.display_names:
        display = [records.display_names.get(c, records.class_names[c]) for c in label_space]
    return labels, names, raw, display


def make_dataset(
    name: str,
    split: str,
    records: SplitRecords,
    transform: Callable[[Image.Image], Any] | None = None,
    on_corrupt: str = "raise",
    check_images: bool | None = None,
    cache_decoded: bool = False,
    cache_size: int | None = 256,
    progress: bool = True,
    label_space: Sequence[Hashable] | None = None,
) -> DMLDataset:
    """Relabel ``records`` to 0-based contiguous labels and wrap them in a :class:`DMLDataset`.

    Args:
        on_corrupt: ``"raise"`` (default): a corrupt file raises
            :class:`~dml_study.data.images.CorruptImageError` naming it when it is loaded (or,
            screened up front, one error naming every corrupt file); ``"skip"``: every image is
            screened up front and unreadable ones are dropped with a warning.
        check_images: screen every image up front (default: only when ``on_corrupt="skip"``),
            through the records in ``<cache>/verified/<name>.json`` (unchanged files are not
            decoded again; see :mod:`dml_study.data.screening`).
        cache_decoded: keep resized decoded images in memory (see :class:`DecodedImageCache`).
        cache_size: shorter side of cached images (``None`` keeps the full resolution).
        label_space: sorted raw class ids defining the labels (In-Shop query and gallery share
            one); default: the sorted class ids present in this split.
    """
    if on_corrupt not in ON_CORRUPT_CHOICES:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT_CHOICES}, got {on_corrupt!r}")
    _require_files(name, split, records.paths)
    paths, class_ids = list(records.paths), list(records.class_ids)
    if check_images is None:
        check_images = on_corrupt == "skip"
    if check_images:
        ok = screen_images(paths, on_corrupt, progress, desc=f"check {name}/{split}",
                           records=records_file(name), dataset=name)
        paths = [p for p, keep in zip(paths, ok, strict=True) if keep]
        class_ids = [c for c, keep in zip(class_ids, ok, strict=True) if keep]
    shared_space = label_space is not None
    if label_space is None:
        label_space = sorted(set(class_ids))
    labels, names, raw, display = _relabel(class_ids, label_space, records)
    ds = DMLDataset(
        name,
        split,
        paths,
        labels,
        names,
        transform=transform,
        raw_class_names=raw,
        # A label space shared with another split (In-Shop query/gallery) may include
        # classes absent from this one; labels still agree across the two splits.
        require_all_classes=shared_space is False,
        display_names=display,
    )
    if cache_decoded:
        ds.enable_decoded_cache(size=cache_size, progress=progress)
    return ds


def check_expected_size(
    name: str,
    split: str,
    num_images: int,
    num_classes: int,
    expected: tuple[int, int] | None,
) -> str | None:
    """Warn (and return the message) when a *full* dataset differs from its published size.

    A split is considered full when it has the published number of classes or at least half
    of the published number of images; smaller ones are subsets (e.g. test fixtures) and
    are not compared.
    """
    if expected is None:
        return None
    exp_images, exp_classes = expected
    full = num_classes == exp_classes or num_images >= exp_images // 2
    if not full or (num_images, num_classes) == (exp_images, exp_classes):
        return None
    message = (
        f"{name}/{split}: found {num_images} images / {num_classes} classes, the published "
        f"split has {exp_images} / {exp_classes} (difference {num_images - exp_images:+d} "
        f"images, {num_classes - exp_classes:+d} classes); results will not be comparable "
        f"to the literature"
    )
    warnings.warn(message, DatasetSizeWarning, stacklevel=3)
    return message
