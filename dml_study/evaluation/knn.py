"""Exact cosine k-nearest-neighbour search with faiss, in bounded-memory query chunks.

Every retrieval metric of :func:`dml_study.evaluation.evaluate` is computed from one search
done here. The neighbour lists follow one canonical order: descending cosine similarity,
ties broken by ascending gallery index, so results are deterministic and independent of the
chunking. faiss returns the exact top-k *scores* but, when several items tie with the k-th
score, an arbitrary subset of them; :func:`search_canonical` detects that case (one extra
neighbour is retrieved) and widens the search for the affected queries only.

In self-retrieval the query itself is removed *by index*, so duplicate images (similarity
equal to the self-match) cannot push it out of the first position unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

# faiss' GPU brute-force search supports k up to 2048 (faiss/gpu/utils/DeviceDefs.cuh).
_GPU_MAX_K = 2048
# Result entries (score + index, 12 bytes each) held at once while resolving tie groups
# that straddle the k-th neighbour: bounds memory even for collapsed (constant) embeddings.
_TIE_BUDGET = 1 << 23
# Result entries per query chunk: caps the chunk when k is large (a class with thousands of
# images makes R_max, hence k, large), about 100 MB of scores and indices.
_CHUNK_BUDGET = 1 << 23


@dataclass(frozen=True)
class NeighbourChunk:
    """Nearest neighbours of the queries ``start:stop``.

    Attributes:
        start: first query index of the chunk.
        stop: one past the last query index of the chunk.
        scores: (stop - start, k) float32 cosine similarities, descending per row.
        indices: (stop - start, k) int64 gallery indices, in the canonical order.
    """

    start: int
    stop: int
    scores: np.ndarray
    indices: np.ndarray


def l2_normalize(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return a C-contiguous float32 copy of ``embeddings`` with unit-norm rows.

    Rows of norm zero stay zero (as ``torch.nn.functional.normalize`` does) instead of
    becoming NaN. Non-finite inputs are rejected because they would silently corrupt the
    neighbour order.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, d); got shape {x.shape}")
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    x /= norms
    return x


def gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(gallery: np.ndarray, use_gpu: bool = False) -> faiss.Index:
    """An exact inner-product index over ``gallery`` (L2-normalised rows: cosine similarity)."""
    index = faiss.IndexFlatIP(gallery.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    return index


def canonical_tie_order(scores: np.ndarray, indices: np.ndarray) -> None:
    """Sort rows in place by (descending score, ascending index).

    faiss returns rows sorted by score, with equal-score runs in no guaranteed order. Only
    rows that contain a tie are re-sorted, which keeps this cheap for real-valued embeddings.
    """
    if scores.shape[1] < 2:
        return
    tied_rows = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))
    if tied_rows.size == 0:
        return
    s, i = scores[tied_rows], indices[tied_rows]
    order = np.lexsort((i, -s), axis=-1)
    scores[tied_rows] = np.take_along_axis(s, order, axis=1)
    indices[tied_rows] = np.take_along_axis(i, order, axis=1)


def remove_self_matches(
    scores: np.ndarray, indices: np.ndarray, query_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query's own entry from its neighbour list (one column less).

    The entry equal to the query's index is removed wherever it appears. When it is not
    among the retrieved neighbours (possible when more than k items tie with it), the last
    entry is dropped instead, so that every row keeps the k - 1 best *other* items.
    """
    is_self = indices == query_ids[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    # A row could list its own index twice only with a corrupt index; guard the reshape.
    if int(is_self.sum()) != len(query_ids):
        raise RuntimeError("a query appears more than once in its own neighbour list")
    keep = ~is_self
    n, k = indices.shape
    return scores[keep].reshape(n, k - 1), indices[keep].reshape(n, k - 1)


def search_canonical(
    index: faiss.Index, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` neighbours of each query in canonical order (score desc, index asc).

    One extra neighbour is searched: when it ties with the k-th, the tie group may continue
    beyond what faiss returned and faiss may have kept any subset of it, so those queries
    are searched again with a doubled k until the group is complete (or the whole gallery
    is retrieved). With real-valued embeddings this almost never triggers.
    """
    total = index.ntotal
    k_wide = min(k + 1, total)
    scores, indices = index.search(queries, k_wide)
    canonical_tie_order(scores, indices)
    if k_wide > k:
        ambiguous = np.flatnonzero(scores[:, k] == scores[:, k - 1])
        for rows in _batches(ambiguous, total):
            s, i = _complete_tie_group(index, queries[rows], k)
            scores[rows, :k], indices[rows, :k] = s, i
    return np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(indices[:, :k])


def _batches(rows: np.ndarray, total: int) -> Iterator[np.ndarray]:
    """Split ``rows`` so that a widened search (up to ``total`` neighbours) stays in budget."""
    step = max(1, _TIE_BUDGET // total)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def _complete_tie_group(
    index: faiss.Index, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Search with a growing k until every row's k-th score is strictly above its last one."""
    total = index.ntotal
    k_wide = min(2 * (k + 1), total)
    while True:
        if k_wide > _GPU_MAX_K and _is_gpu(index):
            index = faiss.index_gpu_to_cpu(index)
        scores, indices = index.search(queries, k_wide)
        canonical_tie_order(scores, indices)
        if k_wide == total or (scores[:, -1] < scores[:, k - 1]).all():
            return scores[:, :k], indices[:, :k]
        k_wide = min(2 * k_wide, total)


def _is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__


def rows_per_chunk(chunk_size: int, k: int) -> int:
    """Queries searched at once: ``chunk_size``, reduced so that results fit the budget."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    return max(1, min(chunk_size, _CHUNK_BUDGET // (k + 2)))


def search(
    queries: np.ndarray,
    gallery: np.ndarray | None,
    k: int,
    chunk_size: int = 4096,
    use_gpu: bool = False,
) -> Iterator[NeighbourChunk]:
    """Yield the ``k`` nearest gallery items of every query, chunk by chunk.

    Args:
        queries: (Nq, d) L2-normalised float32 embeddings.
        gallery: (Ng, d) L2-normalised float32 embeddings, or ``None`` for self-retrieval
            (the queries are the gallery and each query is removed from its own list).
        k: neighbours per query, after self-removal; must not exceed the number of
            candidates (Ng, or Nq - 1 in self-retrieval): callers clamp it.
        chunk_size: queries searched at once (fewer when k is large, see
            :func:`rows_per_chunk`); bounds memory to about ``chunk_size * k * 12`` bytes.
        use_gpu: search on all visible GPUs (falls back to CPU for k >= 2048).
    """
    self_retrieval = gallery is None
    reference = queries if self_retrieval else gallery
    candidates = len(reference) - int(self_retrieval)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be in [1, {candidates}] for this gallery; got {k}")
    k_search = k + int(self_retrieval)
    chunk_size = rows_per_chunk(chunk_size, k_search)
    index = build_index(reference, use_gpu=use_gpu and k_search < _GPU_MAX_K)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        scores, indices = search_canonical(index, queries[start:stop], k_search)
        if self_retrieval:
            scores, indices = remove_self_matches(
                scores, indices, np.arange(start, stop, dtype=indices.dtype)
            )
        yield NeighbourChunk(start, stop, scores, indices)
