"""Stanford Online Products in its official layout (``Ebay_train.txt`` / ``Ebay_test.txt``).

Source: https://cvgl.stanford.edu/projects/lifted_struct/ (``Stanford_Online_Products.zip``).
Class names for the text modality are the super-class (``bicycle_final`` -> ``bicycle``).
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, SplitRecords
from .layout import find_dataset_dir, require_file

FOLDER = "Stanford_Online_Products"
SOURCE_URL = "https://cvgl.stanford.edu/projects/lifted_struct/"
LAYOUT = """<data_root>/Stanford_Online_Products/
    Ebay_train.txt, Ebay_test.txt  ("image_id class_id super_class_id path" header)
    bicycle_final/111085122871_0.JPG ...  (one <super>_final/ folder per super-class)"""
EXPECTED = {"train": (59551, 11318), "test": (60502, 11316)}
HEADER = ["image_id", "class_id", "super_class_id", "path"]


def super_class_name(rel_path: str) -> str:
    """``"bicycle_final/1_0.JPG"`` -> ``"bicycle"``; underscores become spaces."""
    folder = rel_path.split("/", 1)[0]
    folder = folder.removesuffix("_final")
    return folder.replace("_", " ")


def read_split_file(path: Path) -> list[tuple[int, int, str]]:
    """``(image_id, class_id, path)`` rows of an ``Ebay_*.txt`` file."""
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != HEADER:
        raise DatasetLayoutError(f"{path}: first line must be the header {' '.join(HEADER)}")
    rows: list[tuple[int, int, str]] = []
    seen: set[int] = set()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DatasetLayoutError(f"{path}:{lineno}: expected 4 columns, got {line!r}")
        image_id, class_id = int(parts[0]), int(parts[1])
        if image_id in seen:
            raise DatasetLayoutError(f"{path}:{lineno}: duplicate image_id {image_id}")
        seen.add(image_id)
        rows.append((image_id, class_id, parts[3]))
    return rows


def load_records(data_root: Path, split: str) -> SplitRecords:
    """The ``train`` or ``test`` records of Stanford Online Products."""
    root = find_dataset_dir(data_root, FOLDER, "Ebay_train.txt", LAYOUT)
    file = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}[split]
    rows = read_split_file(require_file(root / file, "SOP split file", LAYOUT))
    return SplitRecords(
        paths=[root / rel for _, _, rel in rows],
        class_ids=[c for _, c, _ in rows],
        class_names={c: super_class_name(rel) for _, c, rel in rows},
        raw_class_names={c: f"{rel.split('/', 1)[0]}/{c}" for _, c, rel in rows},
    )
