"""Top-k neighbours of query images in an embedded index: ``python -m dml_study.search``.

**The search is the evaluation's.** Embeddings are prepared exactly as
:func:`dml_study.evaluation.evaluate` prepares them
(:func:`~dml_study.evaluation.api.prepare_embeddings`) and searched with the project's one
exact kNN, :func:`dml_study.evaluation.knn.search` (faiss ``IndexFlatIP``, neighbours in
canonical order: descending cosine, ties by ascending index position). A query that is in
the index (same resolved path) uses the embedding stored there and is left out of its own
neighbours, by index, as the self-retrieval protocol does; when the queries are the whole
index in its order, the call is literally the evaluation's self-retrieval search, so the
top-1 neighbours, hence R@1, are the run's (``tests/export``). Other queries are embedded
with the export and searched against the whole index.

**Correct or not.** When a query's label (its folder name, see
:mod:`dml_study.export.images`) names a class of the index, each neighbour is marked right
or wrong by label equality; R@1 is reported over those queries that have another index item
of their class (the metric's R > 0 rule, :func:`dml_study.evaluation.metrics.relevant_counts`).

**Outputs**: a text table on stdout (the first queries), ``neighbours.csv`` with every
query's k neighbours, and ``gallery.html``: self-contained (thumbnails inline as ``data:``
URIs, no external file), every text HTML-escaped, right/wrong marked by colour *and* a sign.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dml_study.errors import EXIT_USAGE, UserFacingError
from dml_study.export.images import EmbeddingsFile


class SearchError(UserFacingError):
    """A search that cannot run as asked (k, empty index)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of each query, in rank order.

    Attributes:
        query_paths, query_labels: per query.
        index: the searched embeddings file.
        indices: (Nq, k) positions in ``index``; scores: (Nq, k) cosine similarities.
        in_index: (Nq,) position of the query in the index, or -1.
        labelled: (Nq,) whether right/wrong is defined (the query's label is an index class).
    """

    query_paths: list[str]
    query_labels: list[str]
    index: EmbeddingsFile
    indices: np.ndarray
    scores: np.ndarray
    in_index: np.ndarray
    labelled: np.ndarray

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def correct(self) -> np.ndarray:
        """(Nq, k) bool: neighbour label == query label (False where not labelled)."""
        labels = np.asarray(self.index.labels, dtype=object)[self.indices]
        same = labels == np.asarray(self.query_labels, dtype=object)[:, None]
        return same & self.labelled[:, None]

    def recall_at_1(self) -> tuple[float | None, int]:
        """R@1 over the labelled queries with another index item of their class, and their
        number (``None`` when there is none)."""
        counts = Counter(self.index.labels)
        others = np.array([counts.get(lab, 0) - int(pos >= 0) for lab, pos in
                           zip(self.query_labels, self.in_index, strict=True)])
        scored = self.labelled & (others > 0)
        if not scored.any():
            return None, 0
        return float(self.correct()[scored, 0].mean()), int(scored.sum())

    def records(self) -> list[dict[str, Any]]:
        """One CSV row per (query, rank)."""
        correct = self.correct()
        rows = []
        for q, path in enumerate(self.query_paths):
            for r in range(self.k):
                i = int(self.indices[q, r])
                rows.append({
                    "query": path, "query_label": self.query_labels[q], "rank": r + 1,
                    "neighbour": self.index.paths[i], "neighbour_label": self.index.labels[i],
                    "score": f"{float(self.scores[q, r]):.6f}",
                    "correct": (bool(correct[q, r]) if self.labelled[q] else ""),
                })
        return rows


def search_index(
    index: EmbeddingsFile,
    queries: EmbeddingsFile,
    k: int = 5,
) -> SearchResult:
    """The ``k`` nearest index items of every query (see the module docstring)."""
    from dml_study.evaluation.api import prepare_embeddings
    from dml_study.evaluation.knn import remove_self_matches, search

    if k < 1:
        raise SearchError(f"-k must be >= 1, got {k}")
    position = {p: i for i, p in enumerate(index.paths)}
    in_index = np.array([position.get(p, -1) for p in queries.paths], dtype=np.int64)
    embeddings = queries.embeddings.copy()
    known = in_index >= 0
    embeddings[known] = index.embeddings[in_index[known]]  # the stored embedding, exactly
    gallery = prepare_embeddings(index.embeddings, "index embeddings")
    whole_index = len(in_index) == len(index) and np.array_equal(in_index, np.arange(len(index)))
    extra = int(known.any())
    k_eff = min(k, len(index) - extra)
    if k_eff < 1:
        raise SearchError(f"the index holds {len(index)} image(s): nothing to search besides "
                          "the query itself")
    scores = np.empty((len(in_index), k_eff), dtype=np.float32)
    indices = np.empty((len(in_index), k_eff), dtype=np.int64)
    if whole_index:  # exactly the evaluation's self-retrieval call
        chunks = search(gallery, None, k_eff)
        for c in chunks:
            scores[c.start:c.stop], indices[c.start:c.stop] = c.scores, c.indices
    else:
        q = prepare_embeddings(embeddings, "query embeddings")
        for c in search(q, gallery, k_eff + extra):
            s, i = c.scores, c.indices
            if extra:
                s, i = remove_self_matches(s, i, in_index[c.start:c.stop])
            scores[c.start:c.stop], indices[c.start:c.stop] = s, i
    classes = set(index.labels)
    labelled = np.array([lab in classes and lab != "" for lab in queries.labels])
    return SearchResult(list(queries.paths), list(queries.labels), index, indices, scores,
                        in_index, labelled)


# --------------------------------------------------------------------------- outputs


def text_table(result: SearchResult, max_queries: int = 10) -> str:
    """The first ``max_queries`` queries' neighbours as aligned text (for stdout)."""
    correct = result.correct()
    lines = []
    for q in range(min(max_queries, len(result.query_paths))):
        label = f" [{result.query_labels[q]}]" if result.labelled[q] else ""
        lines.append(f"query {q + 1}: {result.query_paths[q]}{label}")
        for r in range(result.k):
            i = int(result.indices[q, r])
            mark = ("+" if correct[q, r] else "-") if result.labelled[q] else " "
            lines.append(f"  {r + 1:>3} {mark} {float(result.scores[q, r]):8.4f}  "
                         f"{result.index.paths[i]}  [{result.index.labels[i]}]")
    hidden = len(result.query_paths) - max_queries
    if hidden > 0:
        lines.append(f"... {hidden} more queries in the CSV")
    return "\n".join(lines)


def thumbnail_uri(path: str | Path, size: int = 96) -> str:
    """A ``data:image/png;base64,...`` thumbnail (longer side ``size``) of an image file."""
    from PIL import Image

    from dml_study.data.images import load_rgb

    image = load_rgb(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td { padding: 4px; vertical-align: top; text-align: center; font-size: 12px; }
td.query { border-right: 2px solid #888; }
figure { margin: 0; }
img { display: block; margin: auto; image-rendering: auto; }
.right img { outline: 4px solid #1a7f37; }
.wrong img { outline: 4px solid #cf222e; }
.mark { font-weight: bold; }
.right .mark { color: #1a7f37; }
.wrong .mark { color: #cf222e; }
figcaption { max-width: 120px; overflow-wrap: anywhere; }
"""


def html_gallery(result: SearchResult, title: str, max_queries: int = 24,
                 thumb: int = 96) -> str:
    """A self-contained HTML page: one row per query (the first ``max_queries``), its image
    then its neighbours with rank, score, label and right (✓) / wrong (✗) marks."""
    esc = html.escape
    cache: dict[str, str] = {}

    def image(path: str) -> str:
        if path not in cache:
            try:
                cache[path] = thumbnail_uri(path, thumb)
            except OSError:
                cache[path] = ""
        uri = cache[path]
        alt = esc(Path(path).name, quote=True)
        return (f'<img src="{uri}" alt="{alt}" width="{thumb}">' if uri
                else f"<div>(unreadable: {esc(path)})</div>")

    correct = result.correct()
    r1, n = result.recall_at_1()
    shown = min(max_queries, len(result.query_paths))
    summary = (f"R@1 over {n} labelled queries: {r1:.4f}" if r1 is not None
               else "queries unlabelled: right/wrong not marked")
    rows = []
    for q in range(shown):
        qpath = result.query_paths[q]
        qlabel = esc(result.query_labels[q]) if result.labelled[q] else ""
        cells = [f'<td class="query"><figure>{image(qpath)}<figcaption><b>query {q + 1}'
                 f'</b><br>{qlabel}<br><span title="{esc(qpath, quote=True)}">'
                 f"{esc(Path(qpath).name)}</span></figcaption></figure></td>"]
        for r in range(result.k):
            i = int(result.indices[q, r])
            npath = result.index.paths[i]
            if result.labelled[q]:
                ok = bool(correct[q, r])
                cls, mark = ("right", "✓") if ok else ("wrong", "✗")
            else:
                cls, mark = "", ""
            cells.append(
                f'<td class="{cls}"><figure>{image(npath)}<figcaption>'
                f'<span class="mark">{mark}</span> #{r + 1} · {float(result.scores[q, r]):.3f}'
                f"<br>{esc(result.index.labels[i])}<br>"
                f'<span title="{esc(npath, quote=True)}">{esc(Path(npath).name)}</span>'
                "</figcaption></figure></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = len(result.query_paths) - shown
    note = f"<p>{more} more queries in neighbours.csv.</p>" if more > 0 else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(summary)}. Cosine similarity; ✓ same class as the "
        "query, ✗ another class.</p>"
        f"<table>{''.join(rows)}</table>{note}</body></html>\n"
    )


def write_outputs(result: SearchResult, out_dir: str | Path, title: str,
                  gallery_queries: int = 24) -> dict[str, Path]:
    """``neighbours.csv`` and ``gallery.html`` in ``out_dir`` (atomically); their paths."""
    from dml_study.atomic_io import atomic_write_csv, atomic_write_text

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "neighbours.csv", "html": out / "gallery.html"}
    atomic_write_csv(paths["csv"], result.records())
    atomic_write_text(paths["html"], html_gallery(result, title, gallery_queries))
    return paths


def queries_from_paths(
    index: EmbeddingsFile, export_path: str | Path | None, images: Sequence[tuple[Path, str]],
    progress: bool = True,
) -> EmbeddingsFile:
    """Query embeddings for ``(path, label)`` images: index rows for images in the index,
    the export's embeddings for the others (which then need ``export_path``)."""
    from dml_study.export.images import embed_paths
    from dml_study.models.exported import read_export

    position = {p: i for i, p in enumerate(index.paths)}
    paths = [str(p) for p, _ in images]
    emb = np.zeros((len(paths), index.embeddings.shape[1]), dtype=np.float32)
    new = [j for j, p in enumerate(paths) if p not in position]
    for j, p in enumerate(paths):
        if p in position:
            emb[j] = index.embeddings[position[p]]
    if new:
        if export_path is None:
            raise SearchError(f"{len(new)} query image(s) are not in the index, e.g. "
                              f"{paths[new[0]]}; give the export to embed them")
        export = read_export(export_path)
        index.check_model(export.model_sha256, "the index")
        emb[new] = embed_paths(export, [Path(paths[j]) for j in new], progress=progress)
    return EmbeddingsFile(emb, paths, [lab for _, lab in images], index.model_sha256,
                          index.export)
