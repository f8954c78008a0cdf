"""Dataset overviews for ``01_data``: split sizes, images per class, sample images.

Thin views over :func:`dml_study.data.get_dataset`; nothing here changes the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits of ``name`` (``train``/``test``, or ``train``/``query``/``gallery``)."""
    from dml_study.data import dataset_info

    return dataset_info(name).splits


def load_splits(name: str, data_root: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    """Every split of ``name`` as a ``DMLDataset`` (no transform: PIL images).

    Progress bars are off by default: in an executed notebook they only add noise.
    """
    from dml_study.data import get_dataset

    kw.setdefault("progress", False)
    return {split: get_dataset(name, split, data_root, **kw) for split in dataset_splits(name)}


def split_summary(splits: dict[str, Any]) -> pd.DataFrame:
    """Per split: images, classes, and min / median / max images per class."""
    rows = []
    for split, dataset in splits.items():
        counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        rows.append({
            "split": split,
            "images": len(dataset),
            "classes": dataset.num_classes,
            "min / class": int(counts.min()) if counts.size else 0,
            "median / class": float(np.median(counts)) if counts.size else 0.0,
            "max / class": int(counts.max()) if counts.size else 0,
        })
    return pd.DataFrame(rows).set_index("split")


def class_counts(splits: dict[str, Any]) -> pd.DataFrame:
    """Long table ``split, class, images`` (one row per class per split)."""
    frames = []
    for split, dataset in splits.items():
        counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        frames.append(pd.DataFrame({
            "split": split, "class": dataset.class_names, "images": counts
        }))
    return pd.concat(frames, ignore_index=True)


def sample_images(
    dataset: Any, num_classes: int = 8, per_class: int = 6, seed: int = 0
) -> tuple[list[list[Any]], list[str]]:
    """Images of ``num_classes`` random classes (seeded), ``per_class`` each, plus names."""
    rng = np.random.default_rng(seed)
    classes = np.sort(rng.choice(dataset.num_classes, size=min(num_classes, dataset.num_classes),
                                 replace=False))
    rows, names = [], []
    for label in classes:
        members = np.flatnonzero(dataset.labels == label)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        rows.append([dataset.load_image(int(i)) for i in np.sort(chosen)])
        names.append(dataset.class_names[int(label)])
    return rows, names
