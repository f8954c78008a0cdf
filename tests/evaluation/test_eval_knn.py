"""Unit tests of the faiss search layer: canonical order, self-removal, chunking."""

import faiss
import numpy as np
import pytest

from dml_study.evaluation import knn
from dml_study.evaluation.knn import (
    build_index,
    canonical_tie_order,
    l2_normalize,
    remove_self_matches,
    search,
    search_canonical,
)


def test_l2_normalize_unit_rows_zero_rows_stay_zero_and_input_untouched():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert x[0, 0] == 3.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.zeros(3), "2-D"), (np.zeros((0, 4)), "non-empty"), (np.array([[np.nan, 1.0]]), "NaN")],
)
def test_l2_normalize_rejects_bad_input_with_the_argument_name(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        l2_normalize(bad, "gallery_embeddings")
    assert "gallery_embeddings" in str(err.value)


def test_canonical_tie_order_sorts_ties_by_index_only_within_equal_scores():
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1], [0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)
    indices = np.array([[4, 9, 2, 7, 0], [3, 1, 4, 1, 5]], np.int64)
    canonical_tie_order(scores, indices)
    np.testing.assert_array_equal(indices, [[4, 2, 7, 9, 0], [3, 1, 4, 1, 5]])
    np.testing.assert_array_equal(scores[0], np.float32([0.9, 0.5, 0.5, 0.5, 0.1]))


def test_remove_self_matches_wherever_the_query_appears_else_drops_last():
    scores = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0], [1.0, 0.9, 0.8]], np.float32)
    indices = np.array([[0, 5, 6], [0, 2, 3], [2, 7, 8]], np.int64)
    # query 5 is second in its row; query 6 is absent (ties); query 2 is first.
    s, i = remove_self_matches(scores, indices, np.array([5, 6, 2]))
    np.testing.assert_array_equal(i, [[0, 6], [0, 2], [7, 8]])
    np.testing.assert_array_equal(s, np.float32([[1.0, 0.5], [1.0, 1.0], [0.9, 0.8]]))


def test_search_canonical_completes_tie_groups_beyond_k():
    # 50 identical gallery vectors: any 3 of them are the top-3 by score; the canonical
    # answer is indices 0, 1, 2 whatever faiss picks.
    rng = np.random.default_rng(0)
    gallery = np.ones((50, 4), np.float32) / 2
    gallery[::2] = l2_normalize(rng.standard_normal((25, 4)))  # break half of them
    index = build_index(np.ascontiguousarray(gallery[::-1]))  # reversed: ties at high ids
    scores, indices = search_canonical(index, np.full((3, 4), 0.5, np.float32), 3)
    tied = np.flatnonzero((gallery[::-1] == 0.5).all(axis=1))
    np.testing.assert_array_equal(indices, np.tile(tied[:3], (3, 1)))
    np.testing.assert_array_equal(scores, np.ones((3, 3), np.float32))


def test_search_canonical_tie_resolution_respects_the_memory_budget(monkeypatch):
    monkeypatch.setattr(knn, "_TIE_BUDGET", 40)  # at most one row per widened search
    x = np.full((30, 4), 0.5, np.float32)  # collapsed embeddings: everything ties
    index = build_index(x)
    calls = []
    original = faiss.IndexFlatIP.search

    def spy(self, q, k, *args, **kwargs):
        calls.append(len(q))
        return original(self, q, k, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexFlatIP, "search", spy)
    _, indices = search_canonical(index, x[:5], 4)
    np.testing.assert_array_equal(indices, np.tile(np.arange(4), (5, 1)))
    assert calls[0] == 5 and max(calls[1:]) == 1


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_search_self_retrieval_is_chunking_invariant_and_excludes_self(chunk_size):
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.standard_normal((40, 6)))
    x[10] = x[11]  # a duplicate pair
    chunks = list(search(x, None, 5, chunk_size=chunk_size))
    assert [c.start for c in chunks] == list(range(0, 40, chunk_size))
    indices = np.concatenate([c.indices for c in chunks])
    assert indices.shape == (40, 5)
    assert not (indices == np.arange(40)[:, None]).any()
    assert indices[10, 0] == 11 and indices[11, 0] == 10
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(indices, np.argsort(-sims, axis=1, kind="stable")[:, :5])


@pytest.mark.parametrize(("gallery", "k"), [(None, 10), (np.ones((4, 2), np.float32), 5)])
def test_search_rejects_k_beyond_the_candidates(gallery, k):
    with pytest.raises(ValueError, match="k must be in"):
        next(search(np.ones((10, 2), np.float32), gallery, k))


def test_large_k_shrinks_the_query_chunk_to_the_memory_budget(monkeypatch):
    monkeypatch.setattr(knn, "_CHUNK_BUDGET", 100)
    x = l2_normalize(np.random.default_rng(2).standard_normal((30, 4)))
    chunks = list(search(x, None, 20, chunk_size=4096))
    assert knn.rows_per_chunk(4096, 21) == 4
    assert [c.start for c in chunks] == list(range(0, 30, 4))
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        knn.rows_per_chunk(0, 5)
