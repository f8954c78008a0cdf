"""Per-class R@1 (``dml_study/evaluation/per_class.py``), by hand and against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from dml_study.evaluation.per_class import per_class_recall_at_1


def test_per_class_recall_by_hand():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    # 0 -> 1 (hit), 1 -> 0 (hit); 2 -> 4 (miss), 3 -> 1 (miss); class 2 has one image
    recall = per_class_recall_at_1(emb, labels)
    np.testing.assert_allclose(recall[:2], [1.0, 0.0])
    assert np.isnan(recall[2])


def test_per_class_recall_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, size=60)
    emb = rng.normal(size=(60, 5)).astype(np.float32) + labels[:, None] * 0.3
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    hit = labels[sims.argmax(axis=1)] == labels
    expected = [hit[labels == c].mean() if (labels == c).sum() > 1 else np.nan for c in range(7)]
    np.testing.assert_allclose(per_class_recall_at_1(emb, labels), expected)


def test_per_class_recall_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one label per row"):
        per_class_recall_at_1(np.zeros((3, 2)), np.zeros(4, dtype=int))
