"""CUB-200-2011 in its official layout (classes 1-100 train, 101-200 test).

Source: https://www.vision.caltech.edu/datasets/cub_200_2011/ (``CUB_200_2011.tgz``).
With the metadata files (``images.txt``, ``image_class_labels.txt``, ``classes.txt``) the
image list comes from them; without them, ``images/<NNN.Name>/*.jpg`` is scanned.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetLayoutError, SplitRecords
from .layout import find_dataset_dir, require_file

FOLDER = "CUB_200_2011"
NUM_TRAIN_CLASSES = 100
SOURCE_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
LAYOUT = """<data_root>/CUB_200_2011/
    images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
    images.txt              (optional: "<image_id> <relative path>")
    image_class_labels.txt  (with images.txt: "<image_id> <class_id>")
    classes.txt             (with images.txt: "<class_id> <NNN.Name>")"""
EXPECTED = {"train": (5864, 100), "test": (5924, 100)}
_CLASS_DIR = re.compile(r"^(\d{3})\.(.+)$")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def readable_name(folder_name: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``."""
    match = _CLASS_DIR.match(folder_name)
    name = match.group(2) if match else folder_name
    return name.replace("_", " ")


def _read_pairs(path: Path) -> dict[int, str]:
    """``"<int id> <value>"`` lines as a dict; a repeated id is an error naming it."""
    pairs: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetLayoutError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in pairs:
            raise DatasetLayoutError(f"{path}:{lineno}: duplicate id {key}")
        pairs[key] = parts[1].strip()
    return pairs


def _from_metadata(root: Path) -> list[tuple[Path, int, str]]:
    images = _read_pairs(root / "images.txt")
    labels = _read_pairs(require_file(root / "image_class_labels.txt", "CUB metadata", LAYOUT))
    classes = _read_pairs(require_file(root / "classes.txt", "CUB metadata", LAYOUT))
    if set(images) != set(labels):
        diff = sorted(set(images) ^ set(labels))[:5]
        raise DatasetLayoutError(
            f"images.txt and image_class_labels.txt in {root} list different image ids, "
            f"e.g. {diff}"
        )
    out = []
    for image_id in sorted(images):
        class_id = int(labels[image_id])
        if class_id not in classes:
            raise DatasetLayoutError(f"class {class_id} of image {image_id} not in classes.txt")
        out.append((root / "images" / images[image_id], class_id, classes[class_id]))
    return out


def _from_folders(root: Path) -> list[tuple[Path, int, str]]:
    out = []
    seen: dict[int, str] = {}
    for class_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        match = _CLASS_DIR.match(class_dir.name)
        if not match:
            raise DatasetLayoutError(
                f"unexpected folder {class_dir}: class folders are named NNN.Name. "
                f"Expected layout:\n{LAYOUT}"
            )
        class_id = int(match.group(1))
        if class_id in seen:
            raise DatasetLayoutError(
                f"duplicate class id {class_id}: {seen[class_id]} and {class_dir.name}"
            )
        seen[class_id] = class_dir.name
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DatasetLayoutError(f"empty class folder {class_dir}: no .jpg images")
        out.extend((f, class_id, class_dir.name) for f in files)
    if not out:
        raise DatasetLayoutError(f"no class folders in {root / 'images'}. Layout:\n{LAYOUT}")
    return out


def load_records(data_root: Path, split: str) -> SplitRecords:
    """The ``train`` (classes 1-100) or ``test`` (101-200) records of CUB-200-2011."""
    root = find_dataset_dir(data_root, FOLDER, "images", LAYOUT)
    items = _from_metadata(root) if (root / "images.txt").exists() else _from_folders(root)
    keep = [it for it in items if (it[1] <= NUM_TRAIN_CLASSES) == (split == "train")]
    return SplitRecords(
        paths=[p for p, _, _ in keep],
        class_ids=[c for _, c, _ in keep],
        class_names={c: readable_name(n) for _, c, n in keep},
        raw_class_names={c: n for _, c, n in keep},
    )
