"""Two-pass exact cosine kNN: a bf16 first pass bounds the candidates, faiss re-ranks them.

:func:`search_two_pass` yields exactly what :func:`dml_study.evaluation.knn.search` yields —
the same neighbour indices in the same canonical order (descending similarity, ties by
ascending gallery index) and the same float32 similarity values, bit for bit — at a
fraction of the cost on CPUs with bf16 matrix units (AVX512-BF16, AMX). Every metric of
:func:`dml_study.evaluation.evaluate` is therefore identical whichever path runs.

How
===
1. **First pass (bf16).** Queries and gallery are rounded to bfloat16 and multiplied with
   ``torch.matmul`` (fp32 accumulation, bf16 result): ``t_qj`` approximates the exact
   similarity ``s_qj`` that the exact search computes.
2. **Candidates from a proven error bound.** ``|t_qj - s_qj| <= a_q + b |t_qj|`` (derived
   below). Let ``k'`` be the number of neighbours the exact search retrieves per query
   (``k + 1``: one more, to detect ties at the k-th) and ``tau_q`` the k'-th largest
   ``t_qj`` (or a lower bound of it). The k' items with ``t >= tau_q`` all have
   ``s >= lo(tau_q) = tau_q - a_q - b |tau_q|``, so the k'-th largest exact similarity
   ``V_q >= lo(tau_q)``. Any item the exact search can return has ``s >= V_q``, hence
   ``hi(t) = t + a_q + b |t| >= s >= lo(tau_q)``: every such item is among the
   *candidates* ``{j : hi(t_qj) >= lo(tau_q)}`` — about ``t >= tau_q - 2 eps``. The number
   of candidates adapts per query to the data (tens at SOP scale for k' = 13).
3. **Exact re-rank through faiss' own kernel.** The candidates are re-scored by faiss'
   exact inner-product kernel (``faiss.knn``) on the gathered candidate rows, which gives
   the top k' *values* exactly (the candidates contain every item with ``s >= V_q``). The
   exact search computes each similarity with the BLAS ``sgemm`` kernel when its query
   chunk is large enough (``nx * d >= faiss.cvar.distance_compute_blas_threshold``) and
   that kernel's value for a pair depends only on the two vectors (OpenBLAS partitions the
   d-dimensional reduction by d alone and accumulates it in a fixed order), so the
   re-rank forces the BLAS kernel and reproduces every value bit for bit.
   :func:`blas_regime` checks both facts on a probe before a chunk size is trusted; chunks
   searched with faiss' sequential kernel instead (small chunks) go to the exact path.
4. **The same tail as the exact path.** The re-ranked lists go through the exact path's own
   steps: :func:`~dml_study.evaluation.knn.canonical_tie_order`, the tie check at the k-th
   neighbour (ambiguity depends only on the values, which are identical), the same
   tie-group completion on the same batches of rows, and self-match removal.

The error bound
===============
Notation: ``x`` a query row and ``y`` a gallery row as float32 (unit norm up to rounding),
``x~ = bf16(x)``, ``y~ = bf16(y)`` (round to nearest even), ``dx = x~ - x``,
``dy = y~ - y``, ``d`` the dimension, ``u32 = 2^-24`` and ``b = 2^-8`` the unit roundoffs
of float32 and bfloat16 (8 significant bits), ``gamma_d = d u32 / (1 - d u32)``.

- *Exact path.* faiss computes ``s = fl32(x . y)``; any fp32 summation order (with or
  without FMA) has ``|s - x.y| <= gamma_d sum_i |x_i y_i| <= gamma_d |x| |y|``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5, with
  Cauchy-Schwarz).
- *Input rounding.* ``x~.y~ - x.y = dx.y~ + x.dy``, so
  ``|x~.y~ - x.y| <= |dx| |y~| + |x| |dy|`` (Cauchy-Schwarz). A priori
  ``|dx| <= b |x|`` (each element has relative error at most ``b``); the bound uses the
  measured norms ``|dx|``, about ``0.4 b`` for 384-d embeddings, which is tighter.
- *bf16 kernel.* Products of two bf16 numbers are exact in fp32 (8 + 8 <= 24 significant
  bits); their fp32 accumulation in any order adds at most ``gamma_d |x~| |y~|``, plus
  under ``2^-126`` per product and per partial sum if subnormals are flushed to zero (AMX
  does), ``(2d + 2) 2^-126`` in all.
- *bf16 result.* Rounding the fp32 accumulator ``v`` to the bf16 result ``t`` costs at most
  half a bf16 spacing: ``|t - v| <= b |t| + 2^-133``.

Summing, with the maxima over the gallery (``|dy|max``, ``|y|max``, ``|y~|max``):
``|t - s| <= a_q + b |t|`` with
``a_q = |dx_q| |y~|max + |x_q| |dy|max + gamma_d (|x_q| |y|max + |x~_q| |y~|max)
+ (2d + 2) 2^-126``, evaluated in float64 and padded by a relative ``2^-40`` for its own
rounding. At 384 dimensions ``a_q`` is about 0.004 (``|dx|`` averages 0.42 b on the
SOP-sized benchmark data), so the candidate window ``2 (a_q + b |t|)`` is about 0.01 in
cosine similarity.

Pooling and fallback
====================
The k'-th largest ``t`` per row is found on group maxima (groups of up to 16 gallery items):
the k'-th largest group maximum is a lower bound of ``tau_q`` (k' distinct items reach it),
which keeps the bound valid and avoids a selection over the whole row. A query whose
candidates exceed :data:`FALLBACK_FRACTION` of the gallery (massive near-ties, duplicates,
collapsed embeddings), or whose threshold is not positive (its k'-th neighbour within
about 2 eps of orthogonal, see :func:`select_candidates`), is searched over the whole
gallery with the exact kernel instead — the exact path for that query. As a tripwire,
every re-ranked neighbour's first-pass value is checked against the bound; a violation (a
bf16 kernel that breaks the error model) raises :class:`BoundViolation`, and
:func:`~dml_study.evaluation.evaluate` then redoes the search on the exact path.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from dml_study.evaluation.knn import (
    NeighbourChunk,
    _batches,
    _complete_tie_group,
    build_index,
    canonical_tie_order,
    remove_self_matches,
    rows_per_chunk,
    search_canonical,
)
from dml_study.typed_fields import check_choice

#: Unit roundoff of bfloat16 (8 significant bits, round to nearest even).
BF16_UNIT_ROUNDOFF = 2.0**-8
#: Unit roundoff of float32 (24 significant bits).
FP32_UNIT_ROUNDOFF = 2.0**-24
#: A query with more candidates than this fraction of the gallery is searched exactly.
FALLBACK_FRACTION = 1 / 16
# Relative padding of the bound for its own float64 evaluation (errors ~1e-16).
_BOUND_PADDING = 2.0**-40
# bf16 first-pass scores held at once (elements): bounds memory (64 MB) and keeps the rows
# of one block in few passes.
_SCORE_BUDGET = 1 << 25
# Candidate rows gathered per faiss re-rank call: queries are re-ranked in groups whose
# candidates together are about this many, so a call costs ~group x union products.
_RERANK_BUDGET = 512
# Largest group of gallery items pooled into one maximum in the first pass.
_MAX_POOL = 16


class BoundViolation(RuntimeError):
    """A first-pass similarity fell outside its proven error bound.

    The bound assumes a bf16 kernel that accumulates exact products in float32 and rounds
    once to bf16; a kernel that does not (a different torch build or backend) makes the
    candidate sets unproven, so the search must be redone on the exact path.
    """


@dataclass
class FastSearchStats:
    """What :func:`search_two_pass` did, for tests and benchmarks (counts, all chunks).

    Attributes:
        chunks: query chunks searched.
        exact_chunks: chunks handed whole to the exact path (faiss' sequential kernel
            would compute their values, or k' covers the whole gallery).
        rows: queries re-ranked from bf16 candidates.
        fallback_rows: queries with too many candidates, searched exactly over the whole
            gallery.
        candidates: candidates re-ranked in total (over ``rows``).
        max_candidates: most candidates of one query (fallback queries included).
        tie_rows: queries whose tie group at the k-th neighbour was completed by the exact
            path's own tie completion.
    """

    chunks: int = 0
    exact_chunks: int = 0
    rows: int = 0
    fallback_rows: int = 0
    candidates: int = 0
    max_candidates: int = 0
    tie_rows: int = 0


@contextlib.contextmanager
def _blas_kernel(threads: int | None = None) -> Iterator[None]:
    """Make faiss compute every inner product with its BLAS kernel, whatever the batch.

    ``threads`` (optional) sets faiss' OpenMP threads meanwhile: the re-rank's many small
    calls run far faster on one thread than woken across several. Neither setting changes
    a value: BLAS splits the work over rows and columns, never inside one dot product.
    """
    old = faiss.cvar.distance_compute_blas_threshold
    old_threads = faiss.omp_get_max_threads()
    faiss.cvar.distance_compute_blas_threshold = 0
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old
        faiss.omp_set_num_threads(old_threads)


def blas_regime(nx: int, d: int) -> bool:
    """True when an exact search of ``nx`` queries in ``d`` dimensions can be re-ranked.

    That needs two facts, checked here on seeded random data (a few ms): faiss' exact
    search of a chunk of ``nx`` queries computes its similarities with the BLAS kernel,
    and that kernel's value for a (query, item) pair does not depend on the other rows of
    the call. The probe searches ``nx`` queries against 64 items with the exact search,
    then recomputes a few queries against a shuffled subset of the items with the BLAS
    kernel forced; every value must agree bit for bit. faiss' sequential kernel (used
    for small chunks) rounds differently in most pairs, so it fails the probe. The answer
    is cached per faiss BLAS threshold, which decides the kernel.
    """
    return _blas_probe(nx, d, faiss.cvar.distance_compute_blas_threshold)


@functools.lru_cache(maxsize=64)
def _blas_probe(nx: int, d: int, threshold: int) -> bool:
    """:func:`blas_regime` for one value of faiss' BLAS threshold (the cache key)."""
    rng = np.random.default_rng(12345)
    n_items = 64
    xb = rng.standard_normal((n_items, d), dtype=np.float32)
    xq = rng.standard_normal((nx, d), dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    index.add(xb)
    dist, ids = index.search(xq, n_items)
    rows = np.unique(np.linspace(0, nx - 1, num=min(nx, 4)).astype(np.int64))
    subset = rng.permutation(n_items)[: n_items // 2 + 3]
    with _blas_kernel():
        sub_dist, sub_ids = faiss.knn(
            np.ascontiguousarray(xq[rows]),
            np.ascontiguousarray(xb[subset]),
            len(subset),
            faiss.METRIC_INNER_PRODUCT,
        )
    full = np.empty((len(rows), n_items), np.float32)
    np.put_along_axis(full, ids[rows], dist[rows], axis=1)
    recomputed = np.empty_like(full)
    np.put_along_axis(recomputed, subset[sub_ids], sub_dist, axis=1)
    return bool(np.array_equal(full[:, subset], recomputed[:, subset]))


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that still allow its bf16 matmul kernels.
_BF16_ISAS = frozenset({"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16",
                        "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                        "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                        "AVX10_2_512_AMX_2"})


def onednn_allows_bf16(environ: dict[str, str] | None = None) -> bool:
    """False when oneDNN's ISA is capped below its bf16 kernels.

    The numerical profile (:mod:`dml_study.determinism`, ``avx2`` by default) caps oneDNN
    at AVX2; a bf16 matmul then runs emulated, measured 24x slower than the exact fp32
    search (30,000 x 128 embeddings, this machine), so the first pass would cost more than
    it saves. The cap is read once, when oneDNN initialises, like the variable itself.
    """
    env = os.environ if environ is None else environ
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap in _BF16_ISAS


@functools.cache
def bf16_matmul_is_fast() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX-BF16)
    and oneDNN may use those kernels (:func:`onednn_allows_bf16`)."""
    if not onednn_allows_bf16():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return torch.backends.mkldnn.is_available() and bool(words & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class RoundingProfile:
    """Per-row norms behind the error bound, as float64 upper bounds (see the module docs).

    Attributes:
        error: ``|bf16(x) - x|`` per row.
        norm: ``|x|`` per row.
        norm_bf16: ``|bf16(x)|`` per row.
    """

    error: np.ndarray
    norm: np.ndarray
    norm_bf16: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, x_bf16: torch.Tensor) -> RoundingProfile:
        """The profile of float32 rows ``x`` (n, d) and their bf16 rounding ``x_bf16``.

        Computed in float32 and padded up: ``bf16(x) - x`` is exact in float32 (Sterbenz:
        the two are within a factor 2), a float32 sum of ``d`` squares errs by at most
        ``gamma_{d+1}`` relative and the square root by one more rounding, so
        ``(1 + gamma_{d+3})`` times the computed norm bounds the true one.
        """
        d = x.shape[1]
        pad = 1 + _gamma(d + 3) + _BOUND_PADDING
        exact = torch.from_numpy(x)
        rounded = x_bf16.to(torch.float32)  # bf16 -> f32 is exact

        def norms(v: torch.Tensor) -> np.ndarray:
            # 2^-60 covers squares that underflow (absolute error below 2^-149 each).
            return torch.linalg.vector_norm(v, dim=1).to(torch.float64).numpy() * pad + 2.0**-60

        return cls(error=norms(rounded - exact), norm=norms(exact), norm_bf16=norms(rounded))


def _gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for float32."""
    nu = n * FP32_UNIT_ROUNDOFF
    if nu >= 0.5:
        raise ValueError(f"dimension {n} is too large for a float32 error bound")
    return nu / (1 - nu)


def additive_bound(queries: RoundingProfile, gallery: RoundingProfile, d: int) -> np.ndarray:
    """``a_q`` per query: ``|t - s| <= a_q + b |t|`` for every gallery item (float64)."""
    gamma = _gamma(d)
    e_max, n_max, nb_max = (
        float(gallery.error.max()),
        float(gallery.norm.max()),
        float(gallery.norm_bf16.max()),
    )
    a = (
        queries.error * nb_max
        + queries.norm * e_max
        + gamma * (queries.norm * n_max + queries.norm_bf16 * nb_max)
        + (2 * d + 2) * 2.0**-126
    )
    return a * (1 + _BOUND_PADDING) + 2.0**-100


def candidate_threshold(tau: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The float32 threshold on first-pass scores: every needed item has ``t >= thr``.

    ``tau`` is (a lower bound of) the k'-th largest first-pass score per query. With
    ``lo(t) = t - a - b|t|`` and ``hi(t) = t + a + b|t|`` (both increasing), an item is a
    candidate when ``hi(t) >= lo(tau)``, i.e. ``t + b|t| >= w = lo(tau) - a``: for
    ``w >= 0`` that is ``t >= w / (1 + b)``, otherwise ``t >= w / (1 - b)``. The result is
    padded down and rounded towards minus infinity, so it never excludes a candidate.
    """
    b = BF16_UNIT_ROUNDOFF
    tau = np.asarray(tau, dtype=np.float64)
    w = tau - a - b * np.abs(tau) - a
    thr = np.where(w >= 0, w / (1 + b), w / (1 - b))
    thr -= (np.abs(thr) + a) * _BOUND_PADDING
    out = thr.astype(np.float32)
    above = out.astype(np.float64) > thr
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out


def within_bound(t: np.ndarray, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Rows (of ``t``/``s``, shape (n, k)) where every ``|t - s| <= a + b|t|``."""
    t64, s64 = t.astype(np.float64), s.astype(np.float64)
    return (np.abs(t64 - s64) <= a[:, None] + BF16_UNIT_ROUNDOFF * np.abs(t64)).all(axis=1)


def _bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 bit patterns given as int16 (exact)."""
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _bf16_ceil_bits(x: np.ndarray) -> np.ndarray:
    """int16 bit patterns of the smallest bf16 >= each positive float32 in ``x``."""
    raw = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    up = (raw >> 16) + ((raw & 0xFFFF) != 0)
    return up.astype(np.uint16).view(np.int16)


def select_candidates(
    bits: np.ndarray, a: np.ndarray, pool: int, k_wide: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate (row, item) of first-pass score rows, and the unbounded rows.

    Args:
        bits: (n, width) bf16 first-pass scores viewed as int16, ``width`` a multiple of
            ``pool``; item ``j`` of group ``c`` is column ``c + j * width // pool``.
        a: (n,) additive bounds ``a_q``.
        pool: items per pooled maximum (1: no pooling).
        k_wide: k', the neighbours the exact search retrieves per query.

    Returns:
        ``(rows, items, unbounded)``: the candidates of the bounded rows as pairs sorted by
        row (every item with ``t >= candidate_threshold(tau_lb, a)``, where ``tau_lb`` is
        the k'-th largest pooled maximum), and a boolean mask of the rows that could not
        be bounded (no candidates returned: they are searched exactly).

    Non-negative bf16 values order like their int16 bit patterns, and every negative
    value's pattern is below every non-negative one. So the int16 maximum of a group is
    the group's float maximum when that is >= 0 and some (negative) member otherwise:
    always a member, which is all the lower bound ``tau_lb`` needs (k' distinct items
    reach it); and when the k'-th largest pooled pattern is positive, the k' largest
    patterns are the k' largest pooled values. Candidate groups are those whose maximum
    reaches a *positive* threshold, which the int16 maximum decides exactly. A row whose
    threshold is <= 0 (its k'-th neighbour within about 2 eps of orthogonal) is unbounded.
    """
    n_rows, width = bits.shape
    m = width // pool
    # numpy's single-threaded reduction costs less CPU than torch's threaded one here.
    p = bits.reshape(n_rows, pool, m).max(axis=1) if pool > 1 else bits
    kth = np.partition(p, m - k_wide, axis=1)[:, m - k_wide]
    tau = _bf16_bits_to_float(np.maximum(kth, 0))  # rows with kth <= 0 are unbounded below
    thr = candidate_threshold(tau, a)
    unbounded = (kth <= 0) | ~(thr > 0)
    thr_bits = _bf16_ceil_bits(np.where(unbounded, np.float32(1.0), thr))
    thr_bits[unbounded] = np.iinfo(np.int16).max  # no finite score passes
    hit_rows, groups = np.divmod(np.flatnonzero(p >= thr_bits[:, None]), m)
    if pool == 1:
        return hit_rows, groups, unbounded
    members = groups[:, None] + np.arange(pool) * m
    values = bits.reshape(-1)[hit_rows[:, None] * width + members]
    keep = values >= thr_bits[hit_rows][:, None]
    rows = np.broadcast_to(hit_rows[:, None], members.shape)[keep]
    return rows, members[keep], unbounded


def pool_size(n_ref: int, k_wide: int) -> int:
    """Gallery items per pooled maximum: up to 16, with at least 8 k' groups."""
    g = _MAX_POOL
    while g > 1 and n_ref // g < 8 * k_wide:
        g //= 2
    return g


class _TwoPass:
    """The per-search state: bf16 copies, bounds, buffers, and the lazily built faiss index."""

    def __init__(
        self,
        queries: np.ndarray,
        reference: np.ndarray,
        self_retrieval: bool,
        k_search: int,
        stats: FastSearchStats,
    ) -> None:
        self.queries, self.reference = queries, reference
        self.k_search = k_search
        self.total, self.d = reference.shape
        self.k_wide = min(k_search + 1, self.total)
        self.stats = stats
        self._index: faiss.Index | None = None
        ref_bf16 = torch.from_numpy(reference).to(torch.bfloat16)
        q_bf16 = ref_bf16 if self_retrieval else torch.from_numpy(queries).to(torch.bfloat16)
        ref_profile = RoundingProfile.of(reference, ref_bf16)
        q_profile = ref_profile if self_retrieval else RoundingProfile.of(queries, q_bf16)
        self.a = additive_bound(q_profile, ref_profile, self.d)
        self.q_bf16 = q_bf16
        self.pool = pool_size(self.total, self.k_wide)
        # (d, width): the fastest matmul layout, padded with zero columns to whole pooling
        # groups. A padding score is exactly 0, below every (positive) threshold, and
        # pooled with real items it can only lower the k'-th largest pooled value.
        self.width = -(-self.total // self.pool) * self.pool
        self.ref_bf16_t = torch.zeros((self.d, self.width), dtype=torch.bfloat16)
        self.ref_bf16_t[:, : self.total] = ref_bf16.T
        self.block_rows = max(16, min(1024, _SCORE_BUDGET // self.width))
        self.cap = max(self.k_wide, int(self.total * FALLBACK_FRACTION))
        self._scores = torch.empty((self.block_rows, self.width), dtype=torch.bfloat16)

    @property
    def index(self) -> faiss.Index:
        """The exact path's index (built on first use: exact chunks and tie completion)."""
        if self._index is None:
            self._index = build_index(self.reference)
        return self._index

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``search_canonical(index, queries[start:stop], k_search)``, computed in two passes."""
        q = self.queries[start:stop]
        self.stats.chunks += 1
        if self.k_wide == self.k_search or not blas_regime(len(q), self.d):
            self.stats.exact_chunks += 1
            return search_canonical(self.index, q, self.k_search)
        n = len(q)
        scores = np.empty((n, self.k_wide), np.float32)
        indices = np.empty((n, self.k_wide), np.int64)
        for r0 in range(0, n, self.block_rows):
            r1 = min(r0 + self.block_rows, n)
            self._block(start, r0, r1, scores, indices)
        # The exact path's own tail (knn.search_canonical after faiss' search).
        canonical_tie_order(scores, indices)
        k = self.k_search
        ambiguous = np.flatnonzero(scores[:, k] == scores[:, k - 1])
        self.stats.tie_rows += len(ambiguous)
        for rows in _batches(ambiguous, self.total):
            s, i = _complete_tie_group(self.index, q[rows], k)
            scores[rows, :k], indices[rows, :k] = s, i
        return np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(indices[:, :k])

    def _block(self, start: int, r0: int, r1: int, scores: np.ndarray, indices: np.ndarray) -> None:
        """First pass, candidates and re-rank of chunk rows ``r0:r1`` (into ``scores``)."""
        q0, q1 = start + r0, start + r1
        n_rows = r1 - r0
        bits = self._first_pass(q0, q1).view(torch.int16)
        a = self.a[q0:q1]
        rows, items, unbounded = select_candidates(bits.numpy(), a, self.pool, self.k_wide)
        counts = np.bincount(rows, minlength=n_rows)
        fallback = np.flatnonzero(unbounded | (counts > self.cap))
        if (counts[~unbounded] < self.k_wide).any():  # the k' first-pass best are candidates
            raise RuntimeError("two-pass search: a bounded query has fewer than k' candidates")
        q = self.queries[q0:q1]
        out_s, out_i = scores[r0:r1], indices[r0:r1]
        if len(fallback):
            keep = ~np.isin(rows, fallback)
            rows, items = rows[keep], items[keep]
            counts[fallback] = 0
            with _blas_kernel():
                out_s[fallback], out_i[fallback] = faiss.knn(
                    np.ascontiguousarray(q[fallback]),
                    self.reference,
                    self.k_wide,
                    faiss.METRIC_INNER_PRODUCT,
                )
        self._rerank(q, rows, items, counts, out_s, out_i)
        # Tripwire: the re-ranked neighbours' first-pass values must obey the bound.
        flat = bits.numpy().reshape(-1)
        first_pass = _bf16_bits_to_float(flat[np.arange(n_rows)[:, None] * self.width + out_i])
        ok = within_bound(first_pass, out_s, a)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0]) + q0
            raise BoundViolation(
                f"query {bad}: a bf16 first-pass similarity is outside its proven error "
                "bound, so this torch build's bf16 matmul breaks the error model "
                "(float32 accumulation, one rounding to bf16); use the exact search"
            )
        self.stats.rows += n_rows - len(fallback)
        self.stats.fallback_rows += len(fallback)
        self.stats.candidates += int(counts.sum())
        self.stats.max_candidates = max(
            self.stats.max_candidates, self.total if len(fallback) else int(counts.max())
        )

    def _first_pass(self, q0: int, q1: int) -> torch.Tensor:
        """bf16 scores of queries ``q0:q1`` against the (padded) gallery, (q1 - q0, width)."""
        t = self._scores[: q1 - q0]
        torch.matmul(self.q_bf16[q0:q1], self.ref_bf16_t, out=t)
        return t

    def _rerank(
        self,
        q: np.ndarray,
        rows: np.ndarray,
        items: np.ndarray,
        counts: np.ndarray,
        out_s: np.ndarray,
        out_i: np.ndarray,
    ) -> None:
        """Exact top-k' of each row over its candidates (``rows`` sorted), via faiss."""
        ends = np.cumsum(counts)
        starts = ends - counts
        active = np.flatnonzero(counts)
        if not len(active):
            return
        # Consecutive active rows whose candidates total about _RERANK_BUDGET per call.
        group_of = starts[active] // _RERANK_BUDGET
        cuts = np.flatnonzero(np.diff(group_of)) + 1
        with _blas_kernel(threads=1):
            for members in np.split(active, cuts):
                lo, hi = starts[members[0]], ends[members[-1]]
                union = np.unique(items[lo:hi])
                dist, ids = faiss.knn(
                    np.ascontiguousarray(q[members]),
                    self.reference[union],
                    self.k_wide,
                    faiss.METRIC_INNER_PRODUCT,
                )
                out_s[members], out_i[members] = dist, union[ids]


def search_two_pass(
    queries: np.ndarray,
    gallery: np.ndarray | None,
    k: int,
    chunk_size: int = 4096,
    stats: FastSearchStats | None = None,
) -> Iterator[NeighbourChunk]:
    """Yield exactly what :func:`dml_study.evaluation.knn.search` yields, in two passes.

    Same arguments and chunks as the exact :func:`~dml_study.evaluation.knn.search` (CPU
    only); ``stats`` (optional) is filled with what was done. Raises
    :class:`BoundViolation` if the bf16 kernel breaks the error model (see the module
    docstring); chunks already yielded are then unproven and the caller must start over
    on the exact path.
    """
    self_retrieval = gallery is None
    reference = queries if self_retrieval else gallery
    candidates = len(reference) - int(self_retrieval)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be in [1, {candidates}] for this gallery; got {k}")
    k_search = k + int(self_retrieval)
    chunk_size = rows_per_chunk(chunk_size, k_search)
    state = _TwoPass(queries, reference, self_retrieval, k_search, stats or FastSearchStats())
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        scores, indices = state.chunk(start, stop)
        if self_retrieval:
            scores, indices = remove_self_matches(
                scores, indices, np.arange(start, stop, dtype=indices.dtype)
            )
        yield NeighbourChunk(start, stop, scores, indices)


#: The ``search`` choices of :func:`~dml_study.evaluation.evaluate`.
SEARCH_METHODS = ("auto", "two_pass", "exact")
# Below this many (query, item) pairs the first pass saves too little to matter.
_MIN_PAIRS = 1 << 22
# Two-pass only while k' is below 1/_MAX_K_FRACTION of the gallery: the re-rank costs about
# 1 us per candidate (about 1.6 k' per query here) against ~6 ns saved per gallery item.
_MAX_K_FRACTION = 512


def two_pass_pays(n_queries: int, n_ref: int, k_search: int) -> bool:
    """Whether the two-pass search should beat the exact one (a cost heuristic, not a
    correctness condition: both return the same)."""
    return (
        bf16_matmul_is_fast()
        and n_queries * n_ref >= _MIN_PAIRS
        and (k_search + 1) * _MAX_K_FRACTION <= n_ref
    )


def resolve_search(method: str, n_queries: int, n_ref: int, k_search: int, use_gpu: bool) -> str:
    """``"two_pass"`` or ``"exact"`` for the ``search`` argument of ``evaluate``.

    ``"auto"`` picks two-pass on CPU when :func:`two_pass_pays`; ``"two_pass"`` forces it
    (CPU only); ``"exact"`` is the plain faiss search, the reference semantics.
    """
    check_choice(method, SEARCH_METHODS, "search")
    if method == "exact":
        return "exact"
    if use_gpu:
        if method == "two_pass":
            raise ValueError("search='two_pass' runs on CPU only; use use_gpu=False")
        return "exact"
    if method == "two_pass" or two_pass_pays(n_queries, n_ref, k_search):
        return "two_pass"
    return "exact"
