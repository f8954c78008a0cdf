"""``evaluate`` against pytorch-metric-learning's ``AccuracyCalculator`` (test-only oracle).

PML 2.x semantics that our definitions follow: queries whose label has no other item in the
reference set ("lone" queries) are excluded from precision_at_1, MAP@R and R-precision; the
query is removed from its own neighbour list by index when ``ref_includes_query=True``; the
averages are plain means over queries (``avg_of_avgs=False``); MAP@R and R-precision need
``k="max_bin_count"`` so that R neighbours are retrieved.
"""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans

from dml_study.evaluation import evaluate, l2_normalize

RETRIEVAL = ("precision_at_1", "mean_average_precision_at_r", "r_precision")


def _clustered(n, classes, dim, noise, seed, lone=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y[:lone] = classes + np.arange(lone)  # singleton classes
    centres = rng.standard_normal((classes + lone, dim))
    x = (centres[y] + noise * rng.standard_normal((n, dim))).astype(np.float32)
    # PML does not normalise: give it the same unit vectors we use.
    return l2_normalize(x), y


def _calculator(include=RETRIEVAL, seed=1234):
    return AccuracyCalculator(
        include=include,
        k="max_bin_count",
        device=torch.device("cpu"),
        kmeans_func=FaissKMeans(niter=20, seed=seed),
    )


def _assert_same(ours, theirs):
    assert ours.recall[1] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours.map_at_r == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours.r_precision == pytest.approx(theirs["r_precision"], abs=1e-6)


@pytest.mark.parametrize(("seed", "noise", "lone"), [(0, 1.0, 0), (1, 1.6, 5), (2, 0.9, 3)])
def test_self_retrieval_matches_pml(seed, noise, lone):
    x, y = _clustered(1200, 60, 32, noise, seed, lone=lone)
    theirs = _calculator().get_accuracy(x, y, x, y, ref_includes_query=True)
    ours = evaluate(x, y, ks=(1,), nmi=False)
    _assert_same(ours, theirs)
    assert ours.excluded_queries == lone
    assert 0.05 < ours.map_at_r < 0.95  # non-trivial data: the comparison means something


@pytest.mark.parametrize(("seed", "noise"), [(3, 1.0), (4, 1.5)])
def test_query_gallery_matches_pml(seed, noise):
    x, y = _clustered(1500, 50, 32, noise, seed)
    q, ql, g, gl = x[:500], y[:500], x[500:], y[500:]
    theirs = _calculator().get_accuracy(q, ql, g, gl, ref_includes_query=False)
    ours = evaluate(q, ql, g, gl, ks=(1,), nmi=False)
    _assert_same(ours, theirs)
    assert 0.05 < ours.map_at_r < 0.95


def test_query_gallery_with_query_labels_missing_from_gallery_matches_pml():
    x, y = _clustered(900, 30, 16, 1.0, seed=5)
    q, ql, g, gl = x[:300], y[:300], x[300:], y[300:]
    keep = gl >= 3  # classes 0..2 only among the queries
    g, gl = g[keep], gl[keep]
    theirs = _calculator().get_accuracy(q, ql, g, gl, ref_includes_query=False)
    ours = evaluate(q, ql, g, gl, ks=(1,), nmi=False)
    _assert_same(ours, theirs)
    assert ours.excluded_queries == int(np.isin(ql, [0, 1, 2]).sum()) > 0


def test_nmi_matches_pml_with_the_same_kmeans_seed():
    x, y = _clustered(800, 20, 16, 1.3, seed=6)
    theirs = _calculator(include=("NMI",), seed=77).get_accuracy(x, y)
    ours = evaluate(x, y, ks=(1,), nmi=True, seed=77)
    assert ours.nmi == pytest.approx(theirs["NMI"], abs=1e-12)
    assert 0.1 < ours.nmi < 0.99
