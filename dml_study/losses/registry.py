"""``create_loss``: build a proxy loss (plus optional Soft Orthogonality) by name.

Names: ``"proxy_anchor"``, ``"normsoftmax"`` (additive margin with m = 0),
``"additive_margin"``, ``"adaptive_margin"``. Common keyword arguments: ``so_lambda`` (0.0),
``so_gram`` ("classes"), ``so_normalize`` (True), ``so_reduction`` ("sum", "mean" or
"excess_mean"; see :mod:`dml_study.losses.soft_orthogonality`), ``proxy_init``
("kaiming"), ``seed`` (0); the rest go to the loss class (e.g. ``alpha``, ``margin``,
``scale``, ``m_min``, ``m_max``, ``mapping``, ``match_mapping``). ``adaptive_margin``
additionally takes exactly one of ``class_names`` (embedded with the packaged
all-MiniLM-L6-v2, cached in ``text_cache_dir``), ``text_embeddings`` (array C × k, or a path
to a ``.npy``) or ``text_distances`` (C × C).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dml_study.losses.adaptive_margin import AdaptiveMarginLoss
from dml_study.losses.additive_margin import AdditiveMarginLoss, NormSoftmaxLoss
from dml_study.losses.base import ProxyLoss
from dml_study.losses.proxy_anchor import ProxyAnchorLoss
from dml_study.losses.soft_orthogonality import SoftOrthogonality
from dml_study.losses.text import class_name_embeddings, load_text_embeddings

LOSSES: dict[str, type[ProxyLoss]] = {
    "proxy_anchor": ProxyAnchorLoss,
    "normsoftmax": NormSoftmaxLoss,
    "additive_margin": AdditiveMarginLoss,
    "adaptive_margin": AdaptiveMarginLoss,
}


def list_losses() -> list[str]:
    """Names :func:`create_loss` accepts, in registry order (as ``timm.list_models``)."""
    return list(LOSSES)


def is_loss(name: object) -> bool:
    """Whether ``name`` is a registered loss (as ``timm.is_model``)."""
    return name in LOSSES


_COMMON = ("so_lambda", "so_gram", "so_normalize", "so_reduction")
_TEXT = ("class_names", "text_embeddings", "text_distances", "text_cache_dir", "text_template")


def _loss_kwargs(cls: type[ProxyLoss]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {k for k in params if k not in ("self", "num_classes", "embedding_dim", "regularizer")}


def _resolve_text(num_classes: int, kw: dict[str, Any]) -> dict[str, Any]:
    """Turn class_names / a .npy path into the text_embeddings the adaptive loss needs."""
    class_names: Sequence[str] | None = kw.pop("class_names", None)
    cache_dir = kw.pop("text_cache_dir", None)
    template = kw.pop("text_template", "{}")
    given = [k for k in ("text_embeddings", "text_distances") if kw.get(k) is not None]
    if class_names is not None:
        given.append("class_names")
    if len(given) != 1:
        raise ValueError(
            "loss 'adaptive_margin' needs exactly one of class_names, text_embeddings "
            f"(array or .npy path) or text_distances; got {given or 'none'}"
        )
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}"
            )
        kw["text_embeddings"] = class_name_embeddings(class_names, cache_dir, template=template)
    elif isinstance(kw.get("text_embeddings"), str | Path):
        kw["text_embeddings"] = load_text_embeddings(kw["text_embeddings"], num_classes)
    elif isinstance(kw.get("text_distances"), str | Path):
        kw["text_distances"] = np.load(kw["text_distances"])
    return kw


def create_loss(name: str, num_classes: int, embedding_dim: int, **kw: Any) -> ProxyLoss:
    """Build the loss ``name`` with an optional Soft Orthogonality regulariser (see module doc)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
    cls = LOSSES[name]
    so = SoftOrthogonality(
        lam=kw.pop("so_lambda", 0.0),
        gram=kw.pop("so_gram", "classes"),
        normalize=kw.pop("so_normalize", True),
        reduction=kw.pop("so_reduction", "sum"),
    )
    if name == "adaptive_margin":
        kw = _resolve_text(num_classes, kw)
    valid = _loss_kwargs(cls)
    unknown = sorted(set(kw) - valid)
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for loss {name!r}; valid: "
            f"{sorted(valid | set(_COMMON) | (set(_TEXT) if name == 'adaptive_margin' else set()))}"
        )
    return cls(num_classes, embedding_dim, regularizer=so, **kw)
