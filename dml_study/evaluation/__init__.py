"""Evaluation of embeddings: Recall@K, MAP@R, R-Precision and NMI with faiss.

- :func:`embed` runs a model over a loader and returns float32 embeddings and labels.
- :func:`evaluate` computes every metric from one exact cosine kNN search (self-retrieval or
  query/gallery) and returns an :class:`EvaluationResult`.

The lower-level pieces (``knn``, ``metrics``, ``clustering``) are importable for analysis.
"""

from dml_study.evaluation.api import evaluate, prepare_embeddings
from dml_study.evaluation.clustering import kmeans_assignments, nmi
from dml_study.evaluation.embed import embed
from dml_study.evaluation.knn import l2_normalize, search
from dml_study.evaluation.metrics import RetrievalAccumulator, relevant_counts
from dml_study.evaluation.result import EvaluationResult

__all__ = [
    "EvaluationResult",
    "RetrievalAccumulator",
    "embed",
    "evaluate",
    "kmeans_assignments",
    "l2_normalize",
    "nmi",
    "prepare_embeddings",
    "relevant_counts",
    "search",
]
