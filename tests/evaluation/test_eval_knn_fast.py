"""The two-pass kNN search equals the exact one: same neighbours, same order, same bits.

Every equality test compares :func:`search_two_pass` chunk by chunk with the exact
:func:`knn.search` (indices equal, similarities equal as bytes) and checks, through the
search's statistics, that the path it claims to exercise really ran: the bf16 re-rank, the
exact fallback of unbounded queries, the exact path's tie completion, or whole exact chunks.
faiss computes a chunk with its BLAS kernel only from ``nx * d >= 128000`` (faiss 1.15), so
the data sets here are just large enough for that (e.g. 2,000+ queries at d = 64).
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from dml_study.evaluation import api, evaluate, knn, knn_fast
from dml_study.evaluation.knn import l2_normalize
from dml_study.evaluation.knn_fast import (
    BF16_UNIT_ROUNDOFF,
    BoundViolation,
    FastSearchStats,
    RoundingProfile,
    additive_bound,
    blas_regime,
    candidate_threshold,
    resolve_search,
    search_two_pass,
    select_candidates,
    within_bound,
)

REPO = Path(__file__).resolve().parents[2]


def _clustered(n, classes, dim, noise, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim))
    x = centres[y] + noise * rng.standard_normal((n, dim))
    return l2_normalize(x), y


def _assert_same_as_exact(queries, gallery, k, chunk_size=4096):
    """Search both ways; assert chunk-by-chunk equality; return the two-pass statistics."""
    stats = FastSearchStats()
    fast = list(search_two_pass(queries, gallery, k, chunk_size=chunk_size, stats=stats))
    exact = list(knn.search(queries, gallery, k, chunk_size=chunk_size))
    assert [(c.start, c.stop) for c in fast] == [(c.start, c.stop) for c in exact]
    for f, e in zip(fast, exact, strict=True):
        np.testing.assert_array_equal(f.indices, e.indices)
        assert f.scores.dtype == e.scores.dtype == np.float32
        assert f.scores.tobytes() == e.scores.tobytes()  # the same bits, not just close
    return stats


def _bf16_scores(queries, gallery):
    """The first pass as the search computes it (bf16 inputs, bf16 result) in float64."""
    q = torch.from_numpy(queries).bfloat16()
    g = torch.from_numpy(gallery).bfloat16()
    return (q @ g.T).double().numpy()


def _exact_scores(queries, gallery):
    """Every similarity exactly as the exact search computes it (faiss' BLAS kernel)."""
    with knn_fast._blas_kernel():
        dist, ids = faiss.knn(queries, gallery, len(gallery), faiss.METRIC_INNER_PRODUCT)
    out = np.empty_like(dist)
    np.put_along_axis(out, ids, dist, axis=1)
    return out


# --- the error bound ------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "scale"), [(16, 1.0), (64, 1.0), (384, 1.0), (128, 1e-30)])
def test_first_pass_error_bound_holds_for_every_pair_and_is_not_vacuous(dim, scale):
    rng = np.random.default_rng(dim)
    x = l2_normalize(rng.standard_normal((700, dim)))
    x[:300] = l2_normalize(x[:300] + 3 * x[0])  # a tight cluster: similarities near 1
    x[5] = 0.0  # a zero row (l2_normalize keeps it zero)
    x = (x * scale).astype(np.float32)  # tiny rows: subnormal-range products
    t, s = _bf16_scores(x, x), _exact_scores(x, x).astype(np.float64)
    bf16 = torch.from_numpy(x).bfloat16()
    profile = RoundingProfile.of(x, bf16)
    a = additive_bound(profile, profile, dim)
    assert within_bound(t, s, a).all()
    if scale == 1.0:
        bound = a[:, None] + BF16_UNIT_ROUNDOFF * np.abs(t)
        observed = np.abs(t - s)
        assert observed.max() > 0.2 * bound.max()  # the bound is within 5x of reality
        # ... and below the a-priori bound: 2 b (inputs) + b (result) + accumulation.
        assert a.max() < 2 * BF16_UNIT_ROUNDOFF + 1e-4


def test_rounding_profile_bounds_the_float64_norms_from_above():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 384)).astype(np.float32)
    bf16 = torch.from_numpy(x).bfloat16()
    profile = RoundingProfile.of(x, bf16)
    exact = x.astype(np.float64)
    rounded = bf16.double().numpy()
    assert (profile.error >= np.linalg.norm(rounded - exact, axis=1)).all()
    assert (profile.norm >= np.linalg.norm(exact, axis=1)).all()
    assert (profile.norm_bf16 >= np.linalg.norm(rounded, axis=1)).all()
    assert np.allclose(profile.norm, np.linalg.norm(exact, axis=1), rtol=1e-4)
    # a-priori: every element rounds with relative error <= 2^-8
    assert (profile.error <= BF16_UNIT_ROUNDOFF * profile.norm * (1 + 1e-4)).all()


def _hi(t, a):
    return t + a + Fraction(BF16_UNIT_ROUNDOFF) * abs(t)


def _lo(t, a):
    return t - a - Fraction(BF16_UNIT_ROUNDOFF) * abs(t)


@settings(max_examples=400, deadline=None)
@given(
    tau=st.floats(-1.125, 1.125, width=32),
    a=st.floats(0, 0.0625, width=32),
    t=st.floats(-1.125, 1.125, width=32),
)
def test_candidate_threshold_is_safe_and_tight(tau, a, t):
    """In exact rational arithmetic: ``hi(t) >= lo(tau)`` implies ``t >= thr``, and ``thr``
    is within 1e-6 below the exact infimum ``t*`` of the qualifying ``t``."""
    thr = Fraction(float(candidate_threshold(np.array([tau]), np.array([a], np.float64))[0]))
    tau_, a_, b = Fraction(tau), Fraction(a), Fraction(BF16_UNIT_ROUNDOFF)
    w = _lo(tau_, a_) - a_
    t_star = w / (1 + b) if w >= 0 else w / (1 - b)
    assert _hi(t_star, a_) == _lo(tau_, a_)
    assert t_star - Fraction(1, 10**6) <= thr <= t_star
    if _hi(Fraction(t), a_) >= _lo(tau_, a_):
        assert Fraction(t) >= thr


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    pool=st.sampled_from([1, 2, 4, 16]),
    k_wide=st.integers(1, 6),
    spread=st.sampled_from([1e-3, 0.02, 0.5]),
    a=st.floats(0, 0.02),
)
def test_select_candidates_keeps_every_item_the_bound_allows(seed, pool, k_wide, spread, a):
    """Whatever the scores (negatives, zeros, duplicates), each bounded row's candidates
    include every item j with hi(t_j) >= lo(k'-th largest t): the items the exact top k'
    can contain."""
    rng = np.random.default_rng(seed)
    width = pool * rng.integers(8 * k_wide, 8 * k_wide + 20)
    values = rng.choice([0.3, -0.2, 0.0, 0.9], size=(6, 1)) + spread * rng.standard_normal(
        (6, width)
    )
    values[1] = values[1, 0]  # a row of exact duplicates
    bits = torch.from_numpy(values.astype(np.float32)).bfloat16().view(torch.int16).numpy()
    t = torch.from_numpy(bits).view(torch.bfloat16).double().numpy()
    a_rows = np.full(6, a)
    rows, items, unbounded = select_candidates(bits, a_rows, pool, k_wide)
    assert (np.diff(rows) >= 0).all()
    for r in np.flatnonzero(~unbounded):
        mine = set(items[rows == r].tolist())
        tau = np.sort(t[r])[-k_wide]
        needed = {
            j
            for j in range(width)
            if _hi(Fraction(t[r, j]), Fraction(a)) >= _lo(Fraction(tau), Fraction(a))
        }
        assert needed <= mine
        assert len(mine) >= k_wide
    assert not np.isin(rows, np.flatnonzero(unbounded)).any()


# --- equality with the exact search ---------------------------------------------------


@pytest.mark.parametrize(
    ("n", "dim", "k", "chunk_size", "seed"),
    [(3000, 64, 5, 4096, 0), (2500, 128, 11, 1024, 1), (4200, 48, 30, 3000, 2)],
)
def test_random_clustered_self_retrieval_equals_exact(n, dim, k, chunk_size, seed):
    x, _ = _clustered(n, n // 8, dim, 1.2, seed)
    x[7] = 0.0  # a zero embedding: every similarity 0, unbounded, searched exactly
    stats = _assert_same_as_exact(x, None, k, chunk_size)
    assert stats.rows > 0 and stats.candidates >= stats.rows * (k + 2)
    assert stats.fallback_rows >= 1


def test_a_chunk_too_small_for_faiss_blas_kernel_is_searched_exactly():
    x, _ = _clustered(2500, 300, 128, 1.2, 3)
    stats = _assert_same_as_exact(x, None, 7, chunk_size=1024)  # last chunk: 452 rows
    assert stats.exact_chunks == 1 and stats.chunks == 3
    stats = _assert_same_as_exact(x, None, 7, chunk_size=200)  # 200 x 128 < 128000
    assert stats.exact_chunks == stats.chunks and stats.rows == 0


def test_query_gallery_protocol_equals_exact():
    x, _ = _clustered(5000, 400, 64, 1.0, 4)
    stats = _assert_same_as_exact(x[:2500], np.ascontiguousarray(x[2500:]), 9)
    assert stats.rows == 2500


def _near_ties(n_queries=1200, n_random=3000, dim=128, per_query=100, tied=10, seed=5):
    """Queries, and a gallery in which each of the first ``tied`` queries has ``per_query``
    items whose similarities to it lie within 2e-4 of 0.6: far closer than bf16 resolves
    (its spacing at 0.6 is 2^-8 ~ 0.004), so the first pass reorders them."""
    rng = np.random.default_rng(seed)
    q = l2_normalize(rng.standard_normal((n_queries, dim)))
    items = [l2_normalize(rng.standard_normal((n_random, dim)))]
    for i in range(tied):
        r = rng.standard_normal((per_query, dim))
        r -= (r @ q[i])[:, None] * q[i]
        r = l2_normalize(r)
        c = 0.6 + 2e-4 * rng.random(per_query)
        items.append(c[:, None] * q[i] + np.sqrt(1 - c**2)[:, None] * r)
    gallery = np.concatenate(items).astype(np.float32)
    return q, np.ascontiguousarray(gallery[rng.permutation(len(gallery))])


def test_near_ties_reordered_by_bf16_rounding_equal_exact():
    q, gallery = _near_ties()
    k = 11
    # The data is adversarial: for the tied queries the first pass orders the exact top k
    # differently, and some exact top-k items are below the k'-th best first-pass score,
    # so only the error window keeps them.
    t, s = _bf16_scores(q[:10], gallery), _exact_scores(q[:10], gallery)
    top_exact = np.argsort(-s, axis=1, kind="stable")[:, :k]
    kth_first_pass = np.sort(t, axis=1)[:, -(k + 1)]
    assert (np.take_along_axis(t, top_exact, 1) < kth_first_pass[:, None]).any()
    order_t = np.argsort(-np.take_along_axis(t, top_exact, 1), axis=1, kind="stable")
    assert (order_t != np.arange(k)).any()
    stats = _assert_same_as_exact(q, gallery, k)
    assert stats.fallback_rows == 0 and stats.max_candidates >= 100


def test_without_the_error_window_the_near_ties_would_come_out_wrong(monkeypatch):
    """The equality above depends on the window: thresholding at the k'-th first-pass
    score itself (no 2 eps) loses true neighbours on this data."""
    q, gallery = _near_ties()
    monkeypatch.setattr(knn_fast, "candidate_threshold", lambda tau, a: tau.astype(np.float32))
    fast = np.concatenate([c.indices for c in search_two_pass(q, gallery, 11)])
    exact = np.concatenate([c.indices for c in knn.search(q, gallery, 11)])
    assert (fast[:10] != exact[:10]).any()


def test_exact_duplicates_straddling_k_use_the_exact_tie_completion():
    rng = np.random.default_rng(6)
    x = l2_normalize(rng.standard_normal((2400, 64)))
    x[:600] = np.repeat(x[:20], 30, axis=0)  # 20 groups of 30 identical vectors (> k + 1)
    x = np.ascontiguousarray(x[rng.permutation(len(x))])
    stats = _assert_same_as_exact(x, None, 12)
    assert stats.tie_rows >= 600 and stats.fallback_rows == 0


def test_massive_near_ties_fall_back_to_the_exact_path_for_those_queries():
    rng = np.random.default_rng(7)
    x = l2_normalize(rng.standard_normal((3000, 64)))
    centre = l2_normalize(rng.standard_normal((1, 64)))
    x[:400] = l2_normalize(centre + 1e-4 * rng.standard_normal((400, 64)))  # 400 > N / 16
    stats = _assert_same_as_exact(x, None, 8)
    # the 400 cluster members, and the few random vectors whose neighbours they are
    assert 400 <= stats.fallback_rows < 450
    assert stats.rows == 3000 - stats.fallback_rows and stats.max_candidates == 3000


def test_collapsed_embeddings_fall_back_everywhere():
    rng = np.random.default_rng(8)
    x = l2_normalize(np.ones((1100, 128)) + 1e-6 * rng.standard_normal((1100, 128)))
    stats = _assert_same_as_exact(x, None, 5)
    assert stats.fallback_rows == 1100 and stats.rows == 0


def test_orthogonal_embeddings_are_unbounded_and_fall_back():
    # Every similarity is 0 (but the self-match): the k'-th neighbour is within 2 eps of
    # orthogonal, where no positive threshold exists.
    x = np.eye(512, dtype=np.float32)
    stats = _assert_same_as_exact(x, None, 4)
    assert stats.fallback_rows == 512 and stats.tie_rows == 512


def test_blas_regime_probe_tells_faiss_kernels_apart(monkeypatch):
    assert blas_regime(4096, 64)
    assert not blas_regime(1, 64)  # faiss searches single queries with its sequential kernel
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 10**9)
    assert not blas_regime(4096, 64)  # the cache follows faiss' setting


def test_a_first_pass_outside_its_bound_is_caught(monkeypatch):
    x, y = _clustered(2400, 200, 64, 1.0, 9)
    original = knn_fast._TwoPass._first_pass

    def broken(self, q0, q1):  # a bf16 kernel that errs by far more than its bound
        t = original(self, q0, q1)
        t[:, ::2] += 0.05
        return t

    monkeypatch.setattr(knn_fast._TwoPass, "_first_pass", broken)
    with pytest.raises(BoundViolation, match="outside its proven error bound"):
        list(search_two_pass(x, None, 5))
    with pytest.warns(RuntimeWarning, match="redoing the search on the exact path"):
        redone = evaluate(x, y, nmi=False, search="two_pass")
    assert redone == evaluate(x, y, nmi=False, search="exact")


# --- evaluate -------------------------------------------------------------------------


def test_evaluate_two_pass_equals_exact_and_the_pml_oracle(monkeypatch):
    x, y = _clustered(3000, 150, 64, 1.0, 10)
    used = []

    def spy(*args, **kwargs):
        stats = FastSearchStats()
        used.append(stats)
        return knn_fast.search_two_pass(*args, **kwargs, stats=stats)

    monkeypatch.setattr(api, "search_two_pass", spy)
    fast = evaluate(x, y, ks=(1, 2, 4, 8), nmi=False, search="two_pass")
    exact = evaluate(x, y, ks=(1, 2, 4, 8), nmi=False, search="exact")
    assert used and used[0].rows == 3000
    assert fast == exact  # every metric identical, not approximately
    pml = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
    ).get_accuracy(x, y, x, y, ref_includes_query=True)
    assert fast.recall[1] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert fast.map_at_r == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert fast.r_precision == pytest.approx(pml["r_precision"], abs=1e-6)
    assert 0.05 < fast.map_at_r < 0.95


def test_search_choices_and_auto():
    with pytest.raises(ValueError, match="did you mean 'two_pass'"):
        evaluate(*_clustered(100, 10, 8, 1.0, 0), search="two-pass")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_search("two_pass", 10**5, 10**5, 12, use_gpu=True)
    assert resolve_search("auto", 10**5, 10**5, 12, use_gpu=True) == "exact"
    assert resolve_search("exact", 10**5, 10**5, 12, use_gpu=False) == "exact"
    assert resolve_search("auto", 500, 500, 12, use_gpu=False) == "exact"  # too small to pay
    assert resolve_search("auto", 60_000, 60_000, 1001, use_gpu=False) == "exact"  # k large
    expected = "two_pass" if knn_fast.bf16_matmul_is_fast() else "exact"
    assert resolve_search("auto", 60_000, 60_000, 13, use_gpu=False) == expected


# --- determinism across thread counts -------------------------------------------------

_THREADS_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import faiss, numpy as np, torch
    n = int(sys.argv[1])
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    from dml_study.evaluation import knn, knn_fast
    from dml_study.evaluation.knn import l2_normalize
    rng = np.random.default_rng(11)
    y = rng.integers(0, 300, 3000)
    x = l2_normalize(rng.standard_normal((300, 64))[y] + 1.2 * rng.standard_normal((3000, 64)))
    x[:60] = np.repeat(x[:6], 10, axis=0)  # duplicates: the tie completion runs too
    for search in (knn_fast.search_two_pass, knn.search):
        h = hashlib.sha256()
        for c in search(x, None, 11):
            h.update(c.scores.tobytes())
            h.update(c.indices.tobytes())
        print(h.hexdigest())
    """
)


@pytest.mark.slow
def test_two_pass_is_identical_under_one_and_two_threads(tmp_path):
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    digests = []
    for n in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(n), "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, str(script), str(n)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        digests.append(out)
    (fast1, exact1), (fast2, exact2) = digests
    assert fast1 == exact1 == fast2 == exact2
    assert len(hashlib.sha256().hexdigest()) == len(fast1)


def test_a_onednn_isa_cap_below_bf16_turns_the_first_pass_off():
    """Under the default numerical profile (oneDNN capped at AVX2) bf16 runs emulated, so
    ``auto`` must not pick the two-pass search; uncapped or bf16-capable caps allow it."""
    assert not knn_fast.onednn_allows_bf16({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not knn_fast.onednn_allows_bf16({"DNNL_MAX_CPU_ISA": "avx512_core"})
    assert knn_fast.onednn_allows_bf16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert knn_fast.onednn_allows_bf16({})
    if not knn_fast.onednn_allows_bf16():
        assert not knn_fast.bf16_matmul_is_fast()
        assert resolve_search("auto", 10**5, 10**5, 5, use_gpu=False) == "exact"
