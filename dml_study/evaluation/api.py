"""``evaluate``: all metrics of a set of embeddings from one exact kNN search.

Protocols:

- *self-retrieval* (CUB-200, Cars-196, SOP; ``gallery_embeddings=None``): every test image
  is a query against all the others; the query is removed from its neighbour list by index.
- *query/gallery* (In-Shop): queries are searched in a separate gallery.

The search retrieves K_max = max(max(ks), R_max) neighbours per query, clamped to the gallery
size, in chunks of queries; Recall@K, MAP@R and R-Precision are all read from it. It is the
exact faiss search (:mod:`~dml_study.evaluation.knn`) or, by default where it pays, the
two-pass search (:mod:`~dml_study.evaluation.knn_fast`) that returns the same neighbours
and similarities bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from dml_study.evaluation.clustering import nmi as clustering_nmi
from dml_study.evaluation.knn import (
    NeighbourChunk,
    gpu_available,
    l2_normalize,
    rows_per_chunk,
    search,
)
from dml_study.evaluation.knn_fast import BoundViolation, resolve_search, search_two_pass
from dml_study.evaluation.metrics import RetrievalAccumulator, relevant_counts
from dml_study.evaluation.result import EvaluationResult


def _as_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"{name} must be a 1-D array with one label per embedding ({n}); got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class labels; got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _unit_scale(embeddings: np.ndarray, name: str) -> np.ndarray:
    """Divide every row by its largest absolute value (exact for cosine similarity).

    faiss searches in float32. Casting first would turn float64 rows below float32's range
    (|x| < 1.2e-38, or below 1e-45 for subnormals) into zero vectors and finite rows above it
    (|x| > 3.4e38) into infinities, and float32 rows above ~1e19 overflow the squared norm.
    Cosine similarity does not depend on a row's scale, so scaling each row into [-1, 1]
    first, in the input's own precision, makes every finite input exact.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        return x  # shape and dtype errors are reported by l2_normalize
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"{name} contains NaN or infinite values in {len(rows)} row(s), e.g. row(s) "
            f"{rows[:5].tolist()}; check the model output (a diverged run?) before evaluating"
        )
    scale = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((len(x), 1))
    scale[scale == 0] = 1.0  # zero rows stay zero
    return x / scale


def prepare_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Embeddings as :func:`evaluate` searches them: each row scaled by its largest magnitude
    (exact for cosine similarity, see :func:`_unit_scale`), then L2-normalised to float32.

    Callers that search outside :func:`evaluate` (``python -m dml_study.search``) use it so
    their neighbours are, bit for bit, the ones the metrics were computed from.
    """
    return l2_normalize(_unit_scale(embeddings, name), name)


def _as_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ks)
    if not values or any(isinstance(k, bool) or int(k) != k or k < 1 for k in values):
        raise ValueError(f"ks must be a non-empty sequence of positive integers; got {ks!r}")
    return tuple(sorted({int(k) for k in values}))


def _checked_inputs(
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    gallery_labels: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Unit-scaled, L2-normalised queries and gallery (``None``: self-retrieval) with their
    labels (the query labels again in self-retrieval); inconsistent inputs raise."""
    queries = prepare_embeddings(query_embeddings, "query_embeddings")
    q_labels = _as_labels(query_labels, len(queries), "query_labels")
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError(
            "gallery_embeddings and gallery_labels must be given together (or neither)"
        )
    if gallery_embeddings is None:
        if len(queries) < 2:
            raise ValueError("self-retrieval needs at least 2 embeddings")
        return queries, q_labels, None, q_labels
    gallery = prepare_embeddings(gallery_embeddings, "gallery_embeddings")
    g_labels = _as_labels(gallery_labels, len(gallery), "gallery_labels")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"query and gallery embeddings differ in dimension: "
            f"{queries.shape[1]} vs {gallery.shape[1]}"
        )
    return queries, q_labels, gallery, g_labels


def _retrieval(
    queries: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray | None,
    g_labels: np.ndarray,
    ks: tuple[int, ...],
    chunk_size: int,
    use_gpu: bool,
    progress: bool,
    method: str,
) -> RetrievalAccumulator:
    """kNN search of every query (chunked) and the retrieval metrics accumulated over it.

    ``method`` is ``evaluate``'s ``search``; a two-pass search whose first pass breaks its
    error bound (:class:`BoundViolation`) is redone on the exact path, with a warning.
    """
    self_retrieval = gallery is None
    available = len(queries) - 1 if gallery is None else len(gallery)
    num_relevant = relevant_counts(q_labels, g_labels, self_retrieval)
    if not (num_relevant > 0).any():
        raise ValueError(
            "no query has a relevant gallery item (every query label is alone); "
            "retrieval metrics are undefined"
        )
    k_max = min(max(max(ks), int(num_relevant.max())), available)
    k_search = k_max + int(self_retrieval)
    reference = queries if self_retrieval else gallery
    method = resolve_search(method, len(queries), len(reference), k_search, use_gpu)
    if method == "two_pass":
        try:
            chunks = search_two_pass(queries, gallery, k_max, chunk_size=chunk_size)
            return _accumulate(chunks, q_labels, g_labels, num_relevant, ks, available,
                               chunk_size, k_search, progress)
        except BoundViolation as err:
            warnings.warn(f"{err}; redoing the search on the exact path", RuntimeWarning,
                          stacklevel=3)
    chunks = search(queries, gallery, k_max, chunk_size=chunk_size, use_gpu=use_gpu)
    return _accumulate(chunks, q_labels, g_labels, num_relevant, ks, available, chunk_size,
                       k_search, progress)


def _accumulate(
    chunks: Iterable[NeighbourChunk],
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    num_relevant: np.ndarray,
    ks: tuple[int, ...],
    available: int,
    chunk_size: int,
    k_search: int,
    progress: bool,
) -> RetrievalAccumulator:
    """The retrieval metrics of the neighbour chunks (a fresh accumulator)."""
    acc = RetrievalAccumulator(ks, available)
    total = -(-len(q_labels) // rows_per_chunk(chunk_size, k_search))
    for chunk in tqdm(chunks, total=total, desc="kNN", disable=not progress, leave=False):
        acc.update(
            g_labels[chunk.indices],
            q_labels[chunk.start : chunk.stop],
            num_relevant[chunk.start : chunk.stop],
        )
    return acc


def evaluate(
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    *,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
    kmeans_iterations: int = 20,
    progress: bool = False,
    search: str = "auto",
) -> EvaluationResult:
    """Recall@K, MAP@R, R-Precision and (optionally) NMI of cosine-similarity retrieval.

    Args:
        query_embeddings: (Nq, d) embeddings; L2-normalised here.
        query_labels: (Nq,) integer class labels.
        gallery_embeddings: (Ng, d) gallery for the query/gallery protocol, or ``None`` for
            self-retrieval (queries are also the gallery, each query removed by index).
        gallery_labels: (Ng,) labels; required exactly when a gallery is given.
        ks: the K of Recall@K. A K larger than the gallery (Nq - 1 in self-retrieval) is
            evaluated on the whole gallery; it is still reported under the requested K.
        nmi: also cluster the *query* embeddings with k-means (k = number of query classes)
            and report NMI. In self-retrieval that is the whole test set.
        seed: k-means seed. Retrieval metrics are deterministic and do not use it.
        chunk_size: queries per faiss search; bounds memory.
        use_gpu: use faiss GPU indexes; ``None`` = when available.
        kmeans_iterations: k-means iterations for NMI.
        progress: show a progress bar over query chunks.
        search: how the exact kNN search runs; every choice returns the same neighbours
            and the same float32 similarities, hence the same metrics.
            ``"exact"``: one faiss fp32 search (the reference semantics). ``"two_pass"``:
            a bf16 first pass whose proven error bound selects the candidates, then
            faiss' exact kernel re-ranks them (CPU; :mod:`dml_study.evaluation.knn_fast`).
            ``"auto"`` (default): two-pass on CPUs with bf16 matrix units when the
            gallery is large and k small enough for it to pay, else exact.

    Returns:
        An :class:`EvaluationResult`. Queries with no relevant gallery item (R = 0) are left
        out of every retrieval metric and counted in ``excluded_queries``.

    Any finite float input is valid, of any scale or precision (float64 rows beyond
    float32's range included): each row is scaled by its largest magnitude before the
    float32 search, which leaves cosine similarities unchanged.

    Raises:
        ValueError: on inconsistent shapes, non-integer labels, non-finite embeddings, bad
            ``ks``, an unknown ``search``, or when no query has a relevant gallery item.
    """
    ks = _as_ks(ks)
    queries, q_labels, gallery, g_labels = _checked_inputs(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels
    )
    if use_gpu and not gpu_available():
        raise ValueError("use_gpu=True, but faiss has no GPU support or sees no GPU")
    use_gpu = gpu_available() if use_gpu is None else use_gpu
    acc = _retrieval(
        queries, q_labels, gallery, g_labels, ks, chunk_size, use_gpu, progress, search
    )

    nmi_value = None
    if nmi:
        nmi_value = clustering_nmi(
            queries, q_labels, seed=seed, niter=kmeans_iterations, use_gpu=use_gpu
        )
    return EvaluationResult(
        recall=acc.recall(),
        map_at_r=acc.map_at_r(),
        r_precision=acc.r_precision(),
        nmi=nmi_value,
        num_queries=acc.scored,
        excluded_queries=acc.excluded,
    )
