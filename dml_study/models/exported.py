"""The export format: a trained embedder and its proxies, usable outside the project.

``python -m dml_study.export RUN_DIR OUT/`` (:mod:`dml_study.export`) writes a directory::

    model.safetensors    the embedder's state dict (backbone.* and head.*), float32
    proxies.safetensors  {"proxies": (C, d)}: one row per training class, in label order
    config.yaml          the run's resolved ExperimentConfig, as the run wrote it
    export.json          this format's manifest: architecture, preprocessing, classes,
                         metrics, provenance and the sha256 of every file above
    README.md            the model card (Markdown with YAML front matter)

This module is the reading side, kept in :mod:`dml_study.models` because rebuilding the
network is backbone construction: :func:`read_export` checks the directory (every file
present, every sha256 as recorded), :class:`Architecture` is what must match for the weights
to mean what they meant in training, and ``create_embedder(..., weights=OUT)``
(:func:`dml_study.models.create_embedder`) rebuilds the network from it **without
pretrained weights** (no hub access: every weight comes from ``model.safetensors``).

Safetensors holds only tensors (no pickle), so loading an export runs no code from it;
``export.json`` and ``config.yaml`` are plain JSON/YAML.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dml_study.errors import EXIT_DAMAGED, EXIT_DATA, EXIT_FAILED, EXIT_USAGE, UserFacingError

#: Version of the export layout (``export.json["format"]``).
EXPORT_FORMAT = 1
MODEL_FILE = "model.safetensors"
PROXIES_FILE = "proxies.safetensors"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "export.json"
CARD_FILE = "README.md"
#: Files whose sha256 ``export.json`` records and :func:`read_export` checks.
HASHED_FILES = (MODEL_FILE, PROXIES_FILE, CONFIG_FILE)


class ExportError(UserFacingError):
    """An export that cannot be written or read; the message names cause, file and fix."""

    exit_code = EXIT_FAILED


class ExportMissingError(ExportError, FileNotFoundError):
    """A file of a run or of an export does not exist."""

    exit_code = EXIT_DATA


class ExportDamagedError(ExportError):
    """A file exists but is not what was written (hash, format, contents)."""

    exit_code = EXIT_DAMAGED


class ArchitectureMismatchError(ExportError, ValueError):
    """``create_embedder`` was asked for another network than the export holds."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Architecture:
    """What ``create_embedder`` must build for an export's weights to be the trained model.

    Attributes:
        backbone: the configured name (``model.backbone``, e.g. ``efficientnet_lite0``).
        timm_architecture: the timm model actually built (``tf_efficientnet_lite0`` for the
            packaged EfficientNet-Lite0; see :func:`dml_study.models.pretrained.resolve_backbone`).
        feature_dim: backbone width; embedding_dim: output width.
        head: ``"linear"`` or ``"identity"``.
        l2_normalize: whether the output is L2-normalised.
        img_size, patch_size: ViT geometry given to timm (``None``: the model's own).
        input_size: the image size the model was fed (``data.image_size``); a ViT's position
            embedding was resampled to it.
        timm_kwargs: further ``timm.create_model`` keyword arguments.
    """

    backbone: str
    timm_architecture: str
    feature_dim: int
    embedding_dim: int
    head: str
    l2_normalize: bool
    img_size: int | None = None
    patch_size: int | None = None
    input_size: int | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        return cls(**{**d, "timm_kwargs": dict(d.get("timm_kwargs") or {})})

    def create_embedder_kwargs(self) -> dict[str, Any]:
        """The ``create_embedder`` arguments that rebuild this network (with ``weights=``)."""
        return {
            "backbone": self.backbone,
            "embedding_dim": self.embedding_dim,
            "l2_normalize": self.l2_normalize,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "input_size": self.input_size,
            **self.timm_kwargs,
        }

    def mismatches(
        self,
        backbone: str,
        embedding_dim: int | None,
        l2_normalize: bool,
        img_size: int | None,
        patch_size: int | None,
        input_size: int | None,
        timm_kwargs: dict[str, Any],
    ) -> list[str]:
        """``"field: export has X, asked Y"`` for every requested value that differs.

        ``backbone`` matches the configured name or the timm architecture; ``embedding_dim``
        ``None`` means the backbone width (an identity head); ``input_size`` ``None`` takes
        the export's.
        """
        out = []
        if backbone not in (self.backbone, self.timm_architecture):
            out.append(f"backbone: export has {self.backbone!r}, asked {backbone!r}")
        width = self.feature_dim if embedding_dim is None else int(embedding_dim)
        if width != self.embedding_dim:
            out.append(f"embedding_dim: export has {self.embedding_dim}, asked {embedding_dim}")
        for name, asked in (("l2_normalize", bool(l2_normalize)), ("img_size", img_size),
                            ("patch_size", patch_size)):
            if asked != getattr(self, name):
                out.append(f"{name}: export has {getattr(self, name)!r}, asked {asked!r}")
        if input_size is not None and input_size != self.input_size:
            out.append(f"input_size: export has {self.input_size!r}, asked {input_size!r}")
        if dict(timm_kwargs) != self.timm_kwargs:
            out.append(f"timm_kwargs: export has {self.timm_kwargs!r}, asked {timm_kwargs!r}")
        return out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_dir_of(path: str | Path) -> Path:
    """The export directory of ``path``: the directory itself, or the one holding a file of it
    (``OUT/model.safetensors`` is accepted for ``OUT``)."""
    path = Path(path).expanduser()
    return path.parent if path.is_file() else path


@dataclass(frozen=True)
class ExportedModel:
    """A checked export directory (see the module docstring); tensors are read on demand."""

    path: Path
    manifest: dict[str, Any]

    @property
    def architecture(self) -> Architecture:
        return Architecture.from_dict(self.manifest["architecture"])

    @property
    def data_config(self) -> dict[str, Any]:
        """The embedder's timm ``data_config`` (mean/std/interpolation/crop_pct/input_size)."""
        config = dict(self.manifest["data_config"])
        for key in ("mean", "std", "input_size"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return config

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How the run fed images at evaluation (see :mod:`dml_study.export.images`)."""
        return dict(self.manifest["preprocessing"])

    @property
    def model_sha256(self) -> str:
        return str(self.manifest["files"][MODEL_FILE])

    def state_dict(self) -> dict[str, Any]:
        """The embedder's tensors from ``model.safetensors`` (CPU)."""
        return _load_tensors(self.path / MODEL_FILE)

    def proxies(self) -> Any:
        """The (C, d) proxy matrix, one row per training class in label order."""
        tensors = _load_tensors(self.path / PROXIES_FILE)
        if "proxies" not in tensors:
            raise ExportDamagedError(
                f"{self.path / PROXIES_FILE} has no tensor 'proxies' (has {sorted(tensors)}); "
                "re-export the run"
            )
        return tensors["proxies"]

    def check_architecture(self, **requested: Any) -> None:
        """Raise :class:`ArchitectureMismatchError` naming every field that differs."""
        problems = self.architecture.mismatches(**requested)
        if problems:
            call = ", ".join(f"{k}={v!r}" for k, v in
                             self.architecture.create_embedder_kwargs().items()
                             if v is not None and v is not False and v != {})
            raise ArchitectureMismatchError(
                f"the export in {self.path} holds another network than asked: "
                f"{'; '.join(problems)}. Call create_embedder({call}, weights=...) or "
                f"dml_study.export.load_embedder({str(self.path)!r})"
            )


def _load_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ExportDamagedError(
            f"cannot read {path}: {err}; the file is damaged, re-export the run"
        ) from err


def read_export(path: str | Path, verify: bool = True) -> ExportedModel:
    """Open the export at ``path`` (its directory, or a file in it).

    Raises :class:`ExportMissingError` when the directory or one of its files is missing,
    :class:`ExportDamagedError` when ``export.json`` is unreadable, of another format, or a
    file's sha256 differs from the recorded one (``verify=False`` skips the hashes).
    """
    root = export_dir_of(path)
    manifest_path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ExportMissingError(
            f"no export at {root}: the directory does not exist; write one with "
            "`python -m dml_study.export RUN_DIR OUT`"
        )
    if not manifest_path.is_file():
        raise ExportMissingError(
            f"{root} is not an export: {MANIFEST_FILE} is missing; write one with "
            "`python -m dml_study.export RUN_DIR OUT`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportDamagedError(f"cannot read {manifest_path}: {err}; re-export the run") \
            from err
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ExportDamagedError(
            f"{manifest_path} has export format {found!r}, this dml_study reads format "
            f"{EXPORT_FORMAT}; re-export the run with this version"
        )
    missing = [name for name in HASHED_FILES if not (root / name).is_file()]
    if missing:
        raise ExportMissingError(
            f"the export in {root} is incomplete: {', '.join(missing)} missing; copy the "
            "whole directory, or re-export the run"
        )
    if verify:
        for name in HASHED_FILES:
            expected = manifest.get("files", {}).get(name)
            actual = file_sha256(root / name)
            if actual != expected:
                raise ExportDamagedError(
                    f"{root / name} has sha256 {actual}, {MANIFEST_FILE} records {expected}: "
                    "the file was changed or damaged; re-export the run"
                )
    return ExportedModel(root, manifest)
