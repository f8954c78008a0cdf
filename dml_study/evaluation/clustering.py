"""NMI of a k-means clustering of the embeddings (k = number of classes), via faiss.

The clustering follows pytorch-metric-learning's ``AccuracyCalculator`` (faiss ``Kmeans``,
20 iterations, then each point is assigned to its nearest centroid), so that with the same
seed both give the same clusters. The NMI itself is scikit-learn's
``normalized_mutual_info_score`` (arithmetic normalisation).
"""

from __future__ import annotations

import math

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dml_study.evaluation.knn import gpu_available


def kmeans_assignments(
    embeddings: np.ndarray,
    num_clusters: int,
    seed: int = 0,
    niter: int = 20,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Cluster ``embeddings`` (N, d float32) with faiss k-means; return (N,) int64 cluster ids.

    Deterministic for a given seed (faiss seeds its centroid initialisation with it).
    """
    n, d = embeddings.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(
            f"num_clusters must be in [1, {n}] (the number of points); got {num_clusters}"
        )
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    kmeans = faiss.Kmeans(
        d,
        num_clusters,
        niter=niter,
        seed=seed,
        gpu=gpu_available() if use_gpu is None else use_gpu,
        verbose=False,
        # Train on every point (faiss subsamples above 256 points per centroid) and do not
        # print faiss' "too few points" warning: few points per class is normal in DML.
        max_points_per_centroid=max(256, math.ceil(n / num_clusters)),
        min_points_per_centroid=1,
    )
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0].astype(np.int64)


def nmi(
    embeddings: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    niter: int = 20,
    use_gpu: bool | None = None,
) -> float:
    """NMI between ``labels`` and a k-means clustering of ``embeddings`` with k = #classes."""
    num_classes = len(np.unique(labels))
    clusters = kmeans_assignments(embeddings, num_classes, seed=seed, niter=niter, use_gpu=use_gpu)
    return float(normalized_mutual_info_score(labels, clusters))
