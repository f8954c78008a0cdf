"""The typed result of one evaluation: what the trainer logs and the notebooks tabulate."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvaluationResult:
    """Retrieval and clustering metrics of one set of embeddings.

    Attributes:
        recall: Recall@K per requested K, as fractions in [0, 1].
        map_at_r: MAP@R (Musgrave et al., 2020), in [0, 1].
        r_precision: R-Precision, in [0, 1].
        nmi: NMI of k-means clusters (k = number of classes) against the labels, or ``None``
            when clustering was not requested.
        num_queries: queries that were scored (queries without any relevant item excluded).
        excluded_queries: queries excluded because no other item shares their label (R = 0).
    """

    recall: dict[int, float]
    map_at_r: float
    r_precision: float
    nmi: float | None
    num_queries: int
    excluded_queries: int
    # Derived lookup table; built once so that __getitem__ and to_dict agree by construction.
    _flat: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        flat = {f"R@{k}": float(v) for k, v in sorted(self.recall.items())}
        flat["MAP@R"] = float(self.map_at_r)
        flat["RP"] = float(self.r_precision)
        if self.nmi is not None:
            flat["NMI"] = float(self.nmi)
        object.__setattr__(self, "_flat", flat)

    def to_dict(self) -> dict[str, float]:
        """Flat, JSON-serialisable metrics: ``"R@1", "R@2", ..., "MAP@R", "RP"`` and ``"NMI"``.

        ``"NMI"`` is present only when it was computed. Query counts are attributes, not
        metrics, so that every value of this dict is a score in [0, 1].
        """
        return dict(self._flat)

    def keys(self) -> list[str]:
        """The keys of :meth:`to_dict`, in order."""
        return list(self._flat)

    def __getitem__(self, key: str) -> float:
        try:
            return self._flat[key]
        except KeyError:
            raise KeyError(f"unknown metric {key!r}; valid keys: {', '.join(self._flat)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._flat

    def summary(self) -> str:
        """One log line in percent, e.g. ``R@1 71.23 | R@2 80.10 | MAP@R 25.00 | RP 35.20``."""
        return " | ".join(f"{k} {100 * v:.2f}" for k, v in self._flat.items())
