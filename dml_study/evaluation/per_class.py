"""Per-class retrieval: R@1 of every class, for the SO paper's motivation analysis.

The SO paper motivates the penalty by classes whose proxies end up close together and
retrieve worse. Testing that needs, per *training* class (the classes that have proxies),
how well its images retrieve each other: :func:`per_class_recall_at_1` is Recall@1 with
every image of the class as a query among all training images (self-retrieval, the query
itself excluded), averaged over the class's images.
"""

from __future__ import annotations

import numpy as np

from dml_study.evaluation.knn import l2_normalize, search


def per_class_recall_at_1(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """R@1 of each class (mean over its images as queries, self-retrieval), shape (C,).

    ``labels`` are class indices ``0 … C−1`` (C = ``labels.max() + 1``); classes with fewer
    than two images are NaN (no other image to retrieve).
    """
    emb = l2_normalize(np.asarray(embeddings, dtype=np.float32))
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(
            f"embeddings must be (N, d) with one label per row; got {emb.shape} and "
            f"{labels.shape} labels"
        )
    hits = np.empty(len(labels), dtype=np.float64)
    for chunk in search(emb, None, 1):
        hits[chunk.start:chunk.stop] = labels[chunk.indices[:, 0]] == labels[chunk.start:chunk.stop]
    classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=classes).astype(float)
    sums = np.bincount(labels, weights=hits, minlength=classes)
    return np.where(counts > 1, sums / np.maximum(counts, 1), np.nan)
