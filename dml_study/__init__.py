"""dml_study: a reproducible, notebook-driven study of proxy-based deep metric learning.

Subpackages, one concept each (in the spirit of pytorch-metric-learning):

- :mod:`dml_study.data` — the four DML benchmarks in their official layouts, the offline
  embedded icon dataset, transforms and m-per-class samplers.
- :mod:`dml_study.models` — ``create_embedder``: timm backbones (DeiT by default) with a
  projection head.
- :mod:`dml_study.losses` — Proxy Anchor, Soft Orthogonality, additive-margin and adaptive
  additive-margin losses; ``create_loss``.
- :mod:`dml_study.evaluation` — Recall@K, MAP@R, R-Precision and NMI with faiss.
- :mod:`dml_study.training` — the training engine, checkpoints, DDP.
- :mod:`dml_study.env` — the provenance record written with every run.
- :mod:`dml_study.determinism` — the numerical profile that gives the same bits on every
  machine; importing the package sets its library variables (before torch initialises).
"""

from dml_study.determinism import pin_environment as _pin_environment

_pin_environment()

__version__ = "0.1.0"
__all__ = ["__version__"]
