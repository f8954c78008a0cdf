"""Retrieval metrics from ranked neighbour labels: Recall@K, MAP@R and R-Precision.

Definitions (per query q with label y, ranked neighbours n_1, n_2, ... of q, query excluded):

- R = number of gallery items other than q with label y.
- Recall@K = 1 if any of n_1..n_K has label y, else 0 (the DML papers' "Recall@K", which is
  a hit rate, not the information-retrieval recall).
- R-Precision = |{i <= R : label(n_i) = y}| / R.
- MAP@R = (1/R) * sum_{i <= R} P(i) * rel(i), with rel(i) = [label(n_i) = y] and P(i) the
  precision over the first i neighbours (Musgrave et al., "A Metric Learning Reality Check",
  ECCV 2020).

Queries with R = 0 are excluded from all three metrics (they are counted separately),
which is what pytorch-metric-learning's ``AccuracyCalculator`` does. Each metric is the
plain mean over the remaining queries (``avg_of_avgs=False`` in PML terms).

Everything works on one chunk of queries at a time; only a few numbers per query are kept,
so the memory use is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def relevant_counts(
    query_labels: np.ndarray, gallery_labels: np.ndarray, self_retrieval: bool
) -> np.ndarray:
    """R per query: gallery items sharing the query's label, minus the query itself.

    In self-retrieval ``gallery_labels`` are the query labels and the query is one of them.
    """
    classes, gallery_codes = np.unique(gallery_labels, return_inverse=True)
    per_class = np.bincount(gallery_codes.ravel(), minlength=len(classes))
    pos = np.searchsorted(classes, query_labels)
    pos_clipped = np.minimum(pos, len(classes) - 1)
    present = classes[pos_clipped] == query_labels
    counts = np.where(present, per_class[pos_clipped], 0).astype(np.int64)
    return counts - 1 if self_retrieval else counts


@dataclass
class RetrievalAccumulator:
    """Collects per-query Recall@K hits, average precision at R and R-precision.

    Per-query values are kept (8 bytes per query and metric) and averaged at the end, so the
    result does not depend on how the queries were chunked, down to the last bit.

    Args:
        ks: the K of Recall@K.
        available: neighbours available per query (gallery size, minus one in
            self-retrieval). Recall@K with K above it is computed at K = ``available``:
            the whole gallery is retrieved, so a query is a hit iff it has a positive.
    """

    ks: Sequence[int]
    available: int
    hits: dict[int, int] = field(init=False)
    scored: int = field(init=False, default=0)
    excluded: int = field(init=False, default=0)
    _ap: list[np.ndarray] = field(init=False, default_factory=list)
    _rp: list[np.ndarray] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.hits = {k: 0 for k in self.ks}

    def update(
        self, neighbour_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray
    ) -> None:
        """Add one chunk: (n, k) neighbour labels in rank order, (n,) labels, (n,) R."""
        keep = num_relevant > 0
        self.excluded += int((~keep).sum())
        if not keep.any():
            return
        match = neighbour_labels[keep] == query_labels[keep, None]
        r = num_relevant[keep]
        self.scored += len(r)
        self._update_recall(match)
        self._update_precision_at_r(match, r)

    def _update_recall(self, match: np.ndarray) -> None:
        # Rank of the first positive (k columns when there is none): one pass serves all K.
        has_hit = match.any(axis=1)
        first_hit = np.where(has_hit, match.argmax(axis=1), match.shape[1])
        for k in self.ks:
            k_eff = min(k, self.available)
            if k_eff > match.shape[1]:
                raise ValueError(f"need {k_eff} neighbours for Recall@{k}; got {match.shape[1]}")
            self.hits[k] += int((first_hit < k_eff).sum())

    def _update_precision_at_r(self, match: np.ndarray, r: np.ndarray) -> None:
        r_max = int(r.max())
        if r_max > match.shape[1]:
            raise ValueError(f"need {r_max} neighbours for MAP@R; got {match.shape[1]}")
        rel = match[:, :r_max] & (np.arange(1, r_max + 1) <= r[:, None])
        correct_so_far = np.cumsum(rel, axis=1, dtype=np.int64)
        precision_at_i = correct_so_far / np.arange(1, r_max + 1, dtype=np.float64)
        # A sequential sum (cumsum), unlike a pairwise one, does not depend on the padded row
        # length r_max of the chunk: per-query values are then identical for any chunking.
        self._ap.append(np.cumsum(precision_at_i * rel, axis=1)[:, -1] / r)
        self._rp.append(correct_so_far[:, -1] / r)

    def recall(self) -> dict[int, float]:
        """Recall@K per K over the scored queries."""
        return {k: self.hits[k] / self.scored for k in self.ks}

    def map_at_r(self) -> float:
        """Mean average precision at R over the scored queries."""
        return float(np.concatenate(self._ap).mean())

    def r_precision(self) -> float:
        """Mean R-precision over the scored queries."""
        return float(np.concatenate(self._rp).mean())
