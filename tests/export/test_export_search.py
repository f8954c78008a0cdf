"""Embedding files, image listing, the search (against the evaluation) and the HTML gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dml_study.evaluation import evaluate
from dml_study.export import (
    EmbeddingsFile,
    html_gallery,
    list_images,
    read_embeddings,
    search_index,
    write_embeddings,
    write_outputs,
)
from dml_study.export.images import EmbeddingsFileError, ImagesError, ModelMismatchError


def _file(emb: np.ndarray, labels: list[str], prefix: str = "/data") -> EmbeddingsFile:
    paths = [f"{prefix}/{lab}/{i}.png" for i, lab in enumerate(labels)]
    return EmbeddingsFile(np.asarray(emb, dtype=np.float32), paths, labels, "sha", "/export")


def _tied_embeddings(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Few distinct directions (0/1 vectors in 3-d): ties everywhere, the hard case."""
    rng = np.random.default_rng(seed)
    emb = rng.integers(0, 2, size=(n, 3)).astype(np.float32)
    emb[(emb == 0).all(axis=1)] = 1.0
    return emb, rng.integers(0, 12, size=n)


def test_search_over_the_whole_index_reproduces_the_evaluations_recall() -> None:
    emb, labels = _tied_embeddings()
    index = _file(emb, [f"c{y}" for y in labels])
    result = search_index(index, index, k=8)
    expected = evaluate(emb, labels, ks=(1, 8), nmi=False)
    r1, n = result.recall_at_1()
    assert r1 == expected.recall[1] and n == expected.num_queries
    hits8 = result.correct()[result.labelled].any(axis=1).mean()
    assert hits8 == pytest.approx(expected.recall[8])
    assert not (result.indices == np.arange(len(emb))[:, None]).any()  # self left out


def test_queries_in_and_out_of_the_index(tmp_path: Path) -> None:
    emb, labels = _tied_embeddings(60, seed=1)
    names = [f"c{y}" for y in labels]
    index = _file(emb, names)
    # Queries 0..9 are index images (by path); the last is a new image with index 3's
    # embedding, so it finds index 3 among its best matches (not excluded: not itself).
    queries = EmbeddingsFile(np.vstack([emb[:10], emb[3:4]]), [*index.paths[:10], "/new.png"],
                             [*names[:10], names[3]], "sha", "/export")
    result = search_index(index, queries, k=5)
    assert (result.in_index == [*range(10), -1]).all()
    for q in range(10):
        assert q not in result.indices[q]
    assert 3 in result.indices[10] and result.scores[10, 0] == pytest.approx(1.0)
    # Same neighbours as the self-retrieval search for the in-index queries.
    full = search_index(index, index, k=5)
    np.testing.assert_array_equal(result.indices[:10], full.indices[:10])
    rows = result.records()
    assert len(rows) == 11 * 5 and rows[0]["rank"] == 1 and rows[0]["query"] == index.paths[0]
    with pytest.raises(Exception, match="k must be >= 1"):
        search_index(index, queries, k=0)


def test_unlabelled_queries_are_not_marked() -> None:
    emb, labels = _tied_embeddings(30)
    index = _file(emb, [f"c{y}" for y in labels])
    queries = EmbeddingsFile(emb[:2], ["/x/a.png", "/x/b.png"], ["Downloads", "Downloads"],
                             "sha", "/export")
    result = search_index(index, queries, k=3)
    assert not result.labelled.any() and result.recall_at_1() == (None, 0)
    assert {r["correct"] for r in result.records()} == {""}


def test_gallery_is_self_contained_and_escapes_every_text(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    paths = []
    for i, colour in enumerate(("red", "blue", "red", "blue")):
        folder = tmp_path / ("<img onerror=x>" if i < 2 else "plain & <b>")
        folder.mkdir(exist_ok=True)
        path = folder / f'{i}"q.png'
        Image.new("RGB", (20, 20), colour).save(path)
        paths.append(str(path))
    emb = np.array([[1, 0], [0, 1], [1, 0.1], [0.1, 1]], dtype=np.float32)
    labels = [evil, "plain & <b>", evil, "plain & <b>"]
    index = EmbeddingsFile(emb, paths, labels, "sha", "/export")
    result = search_index(index, index, k=2)
    page = html_gallery(result, title=f"title {evil}")
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "<b>" not in page.replace("<b>query", "")  # only our own bold tags
    assert 'alt="0&quot;q.png"' in page and "<img onerror" not in page
    sources = [s.split('"')[1] for s in page.split("<img src=")[1:]]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    assert "✓" in page and "✗" in page
    files = write_outputs(result, tmp_path / "out", "t")
    assert files["csv"].read_text().startswith("query,query_label,rank,neighbour")
    assert files["html"].read_text().startswith("<!DOCTYPE html>")


def test_list_images_order_labels_and_errors(tmp_path: Path) -> None:
    for rel in ("a/2.png", "a/1.jpg", "a-b/0.png", "b/c/3.PNG", "a/notes.txt"):
        path = tmp_path / "root" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("txt"):
            path.write_text("x")
        else:
            Image.new("RGB", (4, 4)).save(path, format="PNG")
    found = list_images([tmp_path / "root", tmp_path / "root" / "a" / "1.jpg"])
    rels = [p.relative_to((tmp_path / "root").resolve()).as_posix() for p, _ in found]
    assert rels == ["a/1.jpg", "a/2.png", "a-b/0.png", "b/c/3.PNG"]  # by path parts, once
    assert [lab for _, lab in found] == ["a", "a", "a-b", "c"]
    with pytest.raises(ImagesError, match="does not exist"):
        list_images([tmp_path / "missing"])
    (tmp_path / "none").mkdir()
    with pytest.raises(ImagesError, match="no images"):
        list_images([tmp_path / "none"])


def test_embeddings_file_round_trip_and_checks(tmp_path: Path) -> None:
    emb, labels = _tied_embeddings(7)
    original = _file(emb, [f"c{y}" for y in labels])
    path = write_embeddings(tmp_path / "e", original)
    assert path.name == "e.npz"
    back = read_embeddings(path)
    np.testing.assert_array_equal(back.embeddings, original.embeddings)
    assert back.paths == original.paths and back.labels == original.labels
    back.check_model("sha", "x")
    with pytest.raises(ModelMismatchError, match="another model"):
        back.check_model("other", "the index")
    np.savez(tmp_path / "foreign.npz", embeddings=emb)
    with pytest.raises(EmbeddingsFileError, match="not a dml_study embeddings file"):
        read_embeddings(tmp_path / "foreign.npz")
    with pytest.raises(ImagesError, match="does not exist"):
        read_embeddings(tmp_path / "missing.npz")
