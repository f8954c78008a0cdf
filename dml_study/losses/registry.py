"""``create_loss``: build a proxy loss (plus optional Soft Orthogonality) by name.

Names: ``"proxy_anchor"``, ``"normsoftmax"`` (additive margin with m = 0),
``"additive_margin"``, ``"adaptive_margin"``. Common keyword arguments: ``so_lambda`` (0.0),
``so_gram`` ("classes"), ``so_normalize`` (True), ``so_reduction`` ("sum", "mean" or
"excess_mean"; see :mod:`dml_study.losses.soft_orthogonality`), ``proxy_init``
("kaiming"), ``seed`` (0); the rest go to the loss class (e.g. ``alpha``, ``margin``,
``scale``, ``m_min``, ``m_max``, ``mapping``, ``match_mapping``). ``adaptive_margin``
additionally takes exactly one of ``class_names`` (embedded by ``text_source``: ``"minilm"``,
the packaged all-MiniLM-L6-v2 cached in ``text_cache_dir`` (default), or ``"glove"``, GloVe
word vectors; see :mod:`dml_study.losses.text_sources`), ``text_embeddings`` (array C × k, or
a path to a ``.npy``) or ``text_distances`` (C × C).

:func:`create_loss_from_config` builds the loss of an
:class:`~dml_study.config.ExperimentConfig` (its ``loss`` section and seed): the one builder
of the trainer and of the study's frozen tier.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dml_study.losses.adaptive_margin import AdaptiveMarginLoss
from dml_study.losses.additive_margin import AdditiveMarginLoss, NormSoftmaxLoss
from dml_study.losses.base import ProxyLoss
from dml_study.losses.proxy_anchor import ProxyAnchorLoss
from dml_study.losses.soft_orthogonality import SoftOrthogonality
from dml_study.losses.text import load_text_embeddings
from dml_study.losses.text_sources import DEFAULT_TEXT_SOURCE, TEXT_SOURCES, class_text_embeddings

if TYPE_CHECKING:
    from dml_study.config import ExperimentConfig

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
_TEXT = ("class_names", "text_embeddings", "text_distances", "text_cache_dir", "text_template",
         "text_source")


def _loss_kwargs(cls: type[ProxyLoss]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {k for k in params if k not in ("self", "num_classes", "embedding_dim", "regularizer")}


def _resolve_text(num_classes: int, kw: dict[str, Any]) -> dict[str, Any]:
    """Turn class_names / a .npy path into the text_embeddings the adaptive loss needs."""
    class_names: Sequence[str] | None = kw.pop("class_names", None)
    cache_dir = kw.pop("text_cache_dir", None)
    template = kw.pop("text_template", "{}")
    source = kw.pop("text_source", None)
    if source is not None and source not in TEXT_SOURCES:
        raise ValueError(f"unknown text_source {source!r}; valid: {', '.join(TEXT_SOURCES)}")
    given = [k for k in ("text_embeddings", "text_distances") if kw.get(k) is not None]
    if class_names is not None:
        given.append("class_names")
    if len(given) != 1:
        raise ValueError(
            "loss 'adaptive_margin' needs exactly one of class_names, text_embeddings "
            f"(array or .npy path) or text_distances; got {given or 'none'}"
        )
    if source is not None and class_names is None:
        raise ValueError(
            f"text_source {source!r} embeds class_names, but {given[0]} were given; pass "
            "class_names instead, or drop text_source"
        )
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}"
            )
        kw["text_embeddings"] = class_text_embeddings(
            class_names, source or DEFAULT_TEXT_SOURCE, cache_dir, template=template
        )
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


def create_loss_from_config(
    config: ExperimentConfig, num_classes: int, embedding_dim: int, class_names: Sequence[str]
) -> ProxyLoss:
    """The loss of ``config`` for ``num_classes`` proxies of ``embedding_dim`` dimensions.

    ``config.loss`` gives the name, the Soft Orthogonality options, the proxy initialisation
    and the loss's own ``params``; the proxies are drawn from ``config.run.seed``. An
    ``adaptive_margin`` loss whose ``params`` name no text gets ``class_names`` (the training
    classes, in label order), embedded by ``params.text_source``.
    """
    lo = config.loss
    kw: dict[str, Any] = dict(lo.params)
    if lo.name == "adaptive_margin" and not {
        "class_names", "text_embeddings", "text_distances"
    } & set(kw):
        kw["class_names"] = list(class_names)
    return create_loss(
        lo.name,
        num_classes=num_classes,
        embedding_dim=embedding_dim,
        so_lambda=lo.so_lambda,
        so_gram=lo.so_gram,
        so_normalize=lo.so_normalize,
        so_reduction=lo.so_reduction,
        proxy_init=lo.proxy_init,
        seed=config.run.seed,
        **kw,
    )
