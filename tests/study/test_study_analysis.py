"""Proxy and embedding analysis against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dml_study.study.analysis.per_class import (
    cosine_matrix,
    history_series,
    orthogonality_summary,
    pairwise_cosines,
    proxy_margins,
    tsne_with_proxies,
)


def test_cosine_matrix_ignores_lengths():
    proxies = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    gram = cosine_matrix(proxies)
    assert gram == pytest.approx(np.array([[1, 0, 0.5**0.5], [0, 1, 0.5**0.5],
                                           [0.5**0.5, 0.5**0.5, 1]]))
    assert sorted(pairwise_cosines(proxies)) == pytest.approx([0.0, 0.5**0.5, 0.5**0.5])


def test_orthonormal_proxies_have_zero_orthogonality_error():
    stats = orthogonality_summary(np.eye(4, 6) * 3.0)
    assert stats["so_frobenius"] == pytest.approx(0.0, abs=1e-12)
    assert stats["effective_rank"] == pytest.approx(4.0)


def test_proxy_margins_by_hand():
    proxies = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    embeddings = np.array([[1.0, 0.0], [1.0, 1.0]])
    margins = proxy_margins(embeddings, proxies)
    assert margins["nearest"].tolist() == pytest.approx([1.0, 0.5**0.5])
    assert margins["second"].tolist() == pytest.approx([0.0, 0.5**0.5])
    assert margins["margin"].tolist() == pytest.approx([1.0, 0.0])


def test_tsne_places_embeddings_and_proxies_and_is_seeded():
    rng = np.random.default_rng(0)
    proxies = rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 15)
    embeddings = proxies[labels] + 0.05 * rng.normal(size=(60, 8))
    coords = tsne_with_proxies(embeddings, labels, proxies, max_points=40, perplexity=10, seed=1)
    assert (coords["kind"] == "embedding").sum() == 40 and (coords["kind"] == "proxy").sum() == 4
    again = tsne_with_proxies(embeddings, labels, proxies, max_points=40, perplexity=10, seed=1)
    pd.testing.assert_frame_equal(coords, again)
    # Each proxy's nearest map point belongs to its own class (clusters are tight).
    points = coords[coords["kind"] == "embedding"]
    for _, proxy in coords[coords["kind"] == "proxy"].iterrows():
        d = (points["x"] - proxy["x"]) ** 2 + (points["y"] - proxy["y"]) ** 2
        assert points.loc[d.idxmin(), "label"] == proxy["label"]


def test_history_series_picks_logged_statistics():
    history = pd.DataFrame({"epoch": [0, 1, 2], "orth_so_frobenius": [9.0, 5.0, 1.0],
                            "orth_effective_rank": [3.0, 3.5, 3.9], "loss": [1, 1, 1]})
    long = history_series(history)
    assert set(long["quantity"]) == {"orthogonality error ‖P̂P̂ᵀ − I‖² (Frobenius)", "effective rank"}
    assert long[long["quantity"] == "effective rank"]["value"].tolist() == [3.0, 3.5, 3.9]
    assert history_series(pd.DataFrame()).empty
