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


def display_name(dataset: Any, label: int, width: int = 28) -> str:
    """Readable row label of class ``label``: the raw code of a glyph class plus its name,
    wrapped to ``width`` characters (matplotlib's default font has no CJK glyphs, so the
    character itself is left to the images)."""
    import textwrap

    raw = dataset.raw_class_names[label]
    name = dataset.class_names[label]
    text = f"{raw.split()[0]}: {name}" if raw.startswith("U+") else name
    return "\n".join(textwrap.wrap(text, width, max_lines=3, placeholder=" …"))


def sample_grid(dataset: Any, num_classes: int = 8, per_class: int = 6, seed: int = 0,
                inches: float = 1.1, fontsize: float = 11.0) -> Any:
    """Figure: ``num_classes`` random classes (seeded), one per row, ``per_class`` images each,
    the class name left of its row at a readable size (``fontsize`` pt)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    labels = np.sort(rng.choice(dataset.num_classes, size=min(num_classes, dataset.num_classes),
                                replace=False))
    fig, axes = plt.subplots(len(labels), per_class + 1, squeeze=False,
                             figsize=(inches * per_class + 2.6, inches * len(labels)),
                             gridspec_kw={"width_ratios": [2.6 / inches] + [1] * per_class})
    for row, label in zip(axes, labels, strict=True):
        members = np.flatnonzero(dataset.labels == label)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        for ax in row:
            ax.axis("off")
        row[0].text(1.0, 0.5, display_name(dataset, int(label)), ha="right", va="center",
                    fontsize=fontsize, transform=row[0].transAxes)
        for ax, index in zip(row[1:], chosen, strict=False):
            ax.imshow(dataset.load_image(int(index)))
    fig.tight_layout()
    return fig


def instances_grid(dataset: Any, label: int, cols: int = 8, inches: float = 1.25,
                   fontsize: float = 9.0) -> Any:
    """Figure: every image of class ``label``, each titled with its file stem (the design or
    theme that drew it)."""
    import matplotlib.pyplot as plt

    members = np.flatnonzero(dataset.labels == label)
    rows = -(-len(members) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(inches * cols, (inches + 0.3) * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, members, strict=False):
        ax.imshow(dataset.load_image(int(index)))
        ax.set_title(Path(dataset.paths[int(index)]).stem, fontsize=fontsize)
    fig.suptitle(display_name(dataset, label, width=80), fontsize=fontsize + 3)
    fig.tight_layout()
    return fig


def regime(splits: dict[str, Any], embedding_dim: int) -> dict[str, Any]:
    """The proxy regime of a dataset: ``C`` train classes (= proxies) vs embedding size ``d``.

    ``C <= d``: the proxies can be mutually orthogonal; ``C > d``: the classes Gram matrix
    ``G = P̂P̂ᵀ`` (unit proxies) has rank <= d, so ``||G - I||_F^2 >= C^2/d - C`` (the floor the
    Soft Orthogonality penalty cannot go below).
    """
    c = splits["train"].num_classes
    return {
        "train classes C": c,
        "embedding d": embedding_dim,
        "C / d": round(c / embedding_dim, 2),
        "regime": "C <= d" if c <= embedding_dim else "C > d",
        "SO floor C²/d − C": round(max(0.0, c * c / embedding_dim - c), 1),
    }
