"""In-Shop Clothes Retrieval (DeepFashion) in its official layout.

Source: https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html
(``Img/img.zip`` and ``Eval/list_eval_partition.txt``). Splits: ``train``, ``query`` and
``gallery``; query and gallery share one label space (the union of their item ids).
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, SplitRecords
from .layout import find_dataset_dir, require_file

FOLDER = "Inshop_Clothes"
SOURCE_URL = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
LAYOUT = """<data_root>/Inshop_Clothes/
    Eval/list_eval_partition.txt  (line 1: count, line 2: "image_name item_id
                                   evaluation_status", rows with train|query|gallery)
    Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...  (or Img/WOMEN/... directly)"""
EXPECTED = {"train": (25882, 3997), "query": (14218, 3985), "gallery": (12612, 3985)}
HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")


def category_name(image_name: str) -> str:
    """``"img/WOMEN/Dresses/id_1/x.jpg"`` -> ``"women dresses"`` (the category path)."""
    parts = image_name.split("/")
    if parts and parts[0] == "img":
        parts = parts[1:]
    category = parts[:-2] if len(parts) > 2 else parts[:1]
    return " ".join(category).replace("_", " ").replace("-", " ").lower()


def read_partition(path: Path) -> list[tuple[str, str, str]]:
    """``(image_name, item_id, status)`` rows; checks the count line, header and duplicates."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].strip().isdigit() or lines[1].split() != HEADER:
        raise DatasetLayoutError(
            f"{path}: expected line 1 = number of images, line 2 = header {' '.join(HEADER)}"
        )
    rows, seen = [], set()
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != 3 or parts[2] not in STATUSES:
            raise DatasetLayoutError(
                f"{path}:{lineno}: expected 'image_name item_id train|query|gallery', got {line!r}"
            )
        if parts[0] in seen:
            raise DatasetLayoutError(f"{path}:{lineno}: duplicate image {parts[0]}")
        seen.add(parts[0])
        rows.append((parts[0], parts[1], parts[2]))
    declared = int(lines[0])
    if declared != len(rows):
        raise DatasetLayoutError(
            f"{path}: line 1 declares {declared} images but {len(rows)} rows follow "
            f"(truncated or edited file)"
        )
    return rows


def _image_base(root: Path, first_name: str) -> tuple[Path, bool]:
    """Where image names resolve: ``Img/<name>`` or ``Img/<name without 'img/'>``."""
    img = root / "Img"
    if (img / first_name).exists():
        return img, False
    stripped = first_name.split("/", 1)[1] if first_name.startswith("img/") else first_name
    if (img / stripped).exists():
        return img, True
    raise DatasetLayoutError(
        f"image {first_name} not found as {img / first_name} or {img / stripped}. "
        f"Expected layout:\n{LAYOUT}"
    )


def load_records(data_root: Path, split: str) -> tuple[SplitRecords, list[str]]:
    """Records of ``split`` and the sorted label space (shared by query and gallery)."""
    root = find_dataset_dir(data_root, FOLDER, "Eval", LAYOUT)
    part = require_file(root / "Eval" / "list_eval_partition.txt", "In-Shop partition", LAYOUT)
    rows = read_partition(part)
    if not rows:
        raise DatasetLayoutError(f"{part} lists no images")
    base, strip = _image_base(root, rows[0][0])

    def resolve(name: str) -> Path:
        return base / (name.split("/", 1)[1] if strip and name.startswith("img/") else name)

    keep = [r for r in rows if r[2] == split]
    group = ("train",) if split == "train" else ("query", "gallery")
    space = sorted({item for _, item, status in rows if status in group})
    names = {item: category_name(name) for name, item, status in rows if status in group}
    raw = {item: "/".join(name.split("/")[-3:-1]) for name, item, st in rows if st in group}
    records = SplitRecords(
        paths=[resolve(name) for name, _, _ in keep],
        class_ids=[item for _, item, _ in keep],
        class_names=names,
        raw_class_names=raw,
    )
    return records, space
