"""``evaluate`` against a brute-force numpy implementation of the metric definitions.

The oracle ranks the full similarity matrix with a stable sort (ties by gallery index) and
applies the textbook definitions query by query, with no shared code.
"""

import numpy as np
import pytest

from dml_study.evaluation import evaluate


def _clustered(n: int, classes: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim))
    x = (centres[y] + noise * rng.standard_normal((n, dim))).astype(np.float32)
    return x, y


def _ternary(n: int, dim: int, classes: int, seed: int):
    """Vectors in {-1, +1}^dim: few distinct points, so many exact duplicates and ties.

    Normalised entries are ±1/sqrt(dim) with dim a power of 4, exactly representable, so
    every similarity is exact in float32 and the tie structure is the true one.
    """
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(n, dim)).astype(np.float32)
    return x, rng.integers(0, classes, n)


def _oracle(q, ql, g=None, gl=None, ks=(1,)):
    self_retrieval = g is None
    if self_retrieval:
        g, gl = q, ql
    qn = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g.astype(np.float64) / np.linalg.norm(g, axis=1, keepdims=True)
    sims = qn @ gn.T
    recall_hits = {k: [] for k in ks}
    aps, rps = [], []
    for i in range(len(q)):
        order = np.argsort(-sims[i], kind="stable")
        if self_retrieval:
            order = order[order != i]
        rel = gl[order] == ql[i]
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            recall_hits[k].append(rel[:k].any())
        precisions = [rel[: j + 1].sum() / (j + 1) for j in range(r) if rel[j]]
        aps.append(sum(precisions) / r)
        rps.append(rel[:r].sum() / r)
    return {k: float(np.mean(v)) for k, v in recall_hits.items()}, np.mean(aps), np.mean(rps)


KS = (1, 2, 4, 8, 16, 32, 100, 1000)


@pytest.mark.parametrize("seed", [0, 1])
def test_self_retrieval_matches_bruteforce(seed):
    x, y = _clustered(400, 40, 16, noise=1.2, seed=seed)
    r = evaluate(x, y, ks=KS, nmi=False, chunk_size=64)
    recall, map_r, rp = _oracle(x, y, ks=KS)
    assert r.recall == pytest.approx(recall, abs=1e-12)
    assert r.map_at_r == pytest.approx(map_r, abs=1e-9)
    assert r.r_precision == pytest.approx(rp, abs=1e-9)


def test_query_gallery_matches_bruteforce():
    x, y = _clustered(500, 30, 16, noise=1.2, seed=2)
    q, ql, g, gl = x[:150], y[:150], x[150:], y[150:]
    r = evaluate(q, ql, g, gl, ks=KS, nmi=False, chunk_size=50)
    recall, map_r, rp = _oracle(q, ql, g, gl, ks=KS)
    assert r.recall == pytest.approx(recall, abs=1e-12)
    assert r.map_at_r == pytest.approx(map_r, abs=1e-9)
    assert r.r_precision == pytest.approx(rp, abs=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_massive_ties_and_duplicates_match_stable_bruteforce(chunk_size):
    # 300 points drawn from only 16 distinct vectors: every query has ~18 exact duplicates
    # (self-similarity ties) and all similarities come in exact tie groups.
    x, y = _ternary(300, 4, classes=5, seed=3)
    ks = (1, 2, 4, 8, 16, 32, 100)
    r = evaluate(x, y, ks=ks, nmi=False, chunk_size=chunk_size)
    recall, map_r, rp = _oracle(x, y, ks=ks)
    assert r.recall == pytest.approx(recall, abs=1e-12)
    assert r.map_at_r == pytest.approx(map_r, abs=1e-9)
    assert r.r_precision == pytest.approx(rp, abs=1e-9)


def test_ties_query_gallery_match_stable_bruteforce():
    x, y = _ternary(260, 16, classes=4, seed=4)
    x[:, 4:] = 1.0  # only 16 distinct vectors again
    q, ql, g, gl = x[:60], y[:60], x[60:], y[60:]
    r = evaluate(q, ql, g, gl, ks=(1, 3, 10, 200, 500), nmi=False, chunk_size=16)
    recall, map_r, rp = _oracle(q, ql, g, gl, ks=(1, 3, 10, 200, 500))
    assert r.recall == pytest.approx(recall, abs=1e-12)
    assert r.map_at_r == pytest.approx(map_r, abs=1e-9)
    assert r.r_precision == pytest.approx(rp, abs=1e-9)


def test_lone_classes_are_excluded_like_the_oracle():
    x, y = _clustered(200, 20, 8, noise=1.0, seed=5)
    y = y.copy()
    y[:7] = 100 + np.arange(7)  # seven singleton classes
    r = evaluate(x, y, ks=(1, 4), nmi=False)
    recall, map_r, rp = _oracle(x, y, ks=(1, 4))
    assert r.r_precision == pytest.approx(rp, abs=1e-9)
    assert r.excluded_queries >= 7
    assert r.num_queries + r.excluded_queries == 200
    assert r.recall == pytest.approx(recall, abs=1e-12)
    assert r.map_at_r == pytest.approx(map_r, abs=1e-9)
