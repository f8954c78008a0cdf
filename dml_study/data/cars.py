"""Cars196 (Stanford Cars) in its official layout (classes 1-98 train, 99-196 test).

Source: https://ai.stanford.edu/~jkrause/cars/car_dataset.html (``car_ims.tgz`` and
``cars_annos.mat``). The ``test`` flag of the annotations is the classification split and
is ignored by the class-disjoint DML protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .base import DatasetLayoutError, SplitRecords
from .layout import find_dataset_dir, require_file

FOLDER = "cars196"
NUM_TRAIN_CLASSES = 98
SOURCE_URL = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
LAYOUT = """<data_root>/cars196/
    cars_annos.mat   (struct array 'annotations': relative_im_path, bbox_x1, bbox_y1,
                      bbox_x2, bbox_y2, class (1-based), test; optional 'class_names')
    car_ims/000001.jpg ..."""
EXPECTED = {"train": (8054, 98), "test": (8131, 98)}
ANNOTATION_FIELDS = (
    "relative_im_path",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "class",
    "test",
)


def _as_str(value: object) -> str:
    return str(np.asarray(value).squeeze())


def read_annotations(path: Path) -> tuple[list[str], list[int], list[str] | None]:
    """Image paths, 1-based classes and (when present) class names from ``cars_annos.mat``."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as err:  # scipy raises several types for bad files
        raise DatasetLayoutError(f"cannot read {path} as a MATLAB file: {err}") from err
    if "annotations" not in mat:
        raise DatasetLayoutError(
            f"{path} has no 'annotations' struct (variables: "
            f"{sorted(k for k in mat if not k.startswith('__'))})"
        )
    ann = np.atleast_1d(mat["annotations"])
    fields = ann.dtype.names or ()
    missing = [f for f in ("relative_im_path", "class") if f not in fields]
    if missing:
        raise DatasetLayoutError(
            f"{path}: 'annotations' lacks field(s) {missing}; expected {list(ANNOTATION_FIELDS)}"
        )
    paths = [_as_str(v) for v in ann["relative_im_path"]]
    classes = [int(np.asarray(v).squeeze()) for v in ann["class"]]
    names = None
    if "class_names" in mat:
        names = [_as_str(v) for v in np.atleast_1d(mat["class_names"])]
    return paths, classes, names


def load_records(data_root: Path, split: str) -> SplitRecords:
    """The ``train`` (classes 1-98) or ``test`` (99-196) records of Cars196."""
    root = find_dataset_dir(data_root, FOLDER, "car_ims", LAYOUT)
    mat_path = require_file(root / "cars_annos.mat", "Cars196 annotations", LAYOUT)
    rel_paths, classes, names = read_annotations(mat_path)
    seen: set[str] = set()
    for rel in rel_paths:
        if rel in seen:
            raise DatasetLayoutError(f"{mat_path}: duplicate image {rel} in annotations")
        seen.add(rel)
    if names is not None and max(classes) > len(names):
        raise DatasetLayoutError(
            f"{mat_path}: class {max(classes)} but only {len(names)} class_names"
        )
    keep = [
        (rel, c) for rel, c in zip(rel_paths, classes, strict=True)
        if (c <= NUM_TRAIN_CLASSES) == (split == "train")
    ]
    class_names = {
        c: (names[c - 1] if names is not None else f"car model {c}") for _, c in keep
    }
    return SplitRecords(
        paths=[root / rel for rel, _ in keep],
        class_ids=[c for _, c in keep],
        class_names=class_names,
    )
