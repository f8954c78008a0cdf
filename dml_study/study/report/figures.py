"""The study's figure index: ``results/<study>/figures/*.png`` + ``figures/index.json``.

Notebooks save the figures the report shows first through :func:`save_figure`; the index is
a JSON list of ``{"file": "figures/<name>.png", "title": ..., "caption": ...}`` (paths
relative to ``results/<study>/``), kept in :data:`FIGURE_ORDER` (headline, λ sweep,
convergence, proxy orthogonality, then the rest in the order saved). Files are written
atomically; saving a figure again replaces its entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from dml_study.atomic_io import atomic_write_json, atomic_write_with

#: Figures the report shows first, in this order.
FIGURE_ORDER: tuple[str, ...] = (
    "headline", "lambda_sweep", "convergence", "proxy_orthogonality", "so_floor",
    "motivation", "adaptive_margin",
)


def index_path(study_dir: str | Path) -> Path:
    return Path(study_dir) / "figures" / "index.json"


def read_index(study_dir: str | Path) -> list[dict[str, str]]:
    """The current figure index (empty when there is none yet)."""
    path = index_path(study_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def save_figure(
    study_dir: str | Path, fig: Figure, name: str, title: str, caption: str, dpi: int = 110
) -> Path:
    """Write ``figures/<name>.png`` and its index entry; returns the PNG path."""
    if not name or "/" in name:
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    png = Path(study_dir) / "figures" / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(png, lambda fh: fig.savefig(fh, format="png", dpi=dpi,
                                                  bbox_inches="tight"))
    entry = {"file": f"figures/{name}.png", "title": title, "caption": caption}
    entries = [e for e in read_index(study_dir) if e.get("file") != entry["file"]] + [entry]

    def rank(item: tuple[int, dict[str, str]]) -> tuple[int, int]:
        position, e = item
        stem = Path(e["file"]).stem
        return (FIGURE_ORDER.index(stem) if stem in FIGURE_ORDER else len(FIGURE_ORDER),
                position)

    ordered = [e for _, e in sorted(enumerate(entries), key=rank)]
    atomic_write_json(index_path(study_dir), ordered)
    return png
