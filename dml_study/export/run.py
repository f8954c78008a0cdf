"""Reading a finished run for export: its config, weights, proxies and the network it trained.

Two tiers write runs (:mod:`dml_study.training.run_dir` has the layout):

- **fine-tuned** (:mod:`dml_study.training`): the whole embedder is in
  ``checkpoints/last.pt`` (the final epoch's weights, what ``metrics.json`` and
  ``test_embeddings.npz`` report) and ``checkpoints/best.pt`` (the epoch of the best test
  R@1). Exported are the checkpoint's ``model`` (backbone + head) and ``loss`` proxies;
- **frozen** (:mod:`dml_study.study.tiers.frozen`): only the head and the proxies were trained, on
  cached features of the *pretrained* backbone; the run stores ``head.safetensors`` and
  ``proxies.npy``. Exported is the pretrained backbone, rebuilt now exactly as the feature
  extraction built it (so it must be obtainable: packaged, hub cache or
  ``model.pretrained_path``), joined to the trained head, so the export is self-contained.
  A frozen run written before runs saved their head (no ``head.safetensors``) cannot be
  exported unless its head is the identity; re-train it.

**Loading without pickle code.** The checkpoints are ``torch.save`` pickles; they are read
here with ``torch.load(weights_only=True)``, torch's restricted unpickler, which only builds
tensors, containers and primitive types. Checkpoint format 2 (the trainer's, see
:mod:`dml_study.training.checkpoint`) stores NumPy's RNG state as plain values and needs
nothing more; a format-1 ``last.pt`` held it as a NumPy array, so
:data:`NUMPY_SAFE_GLOBALS` allows exactly NumPy's array reconstruction
(``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` and the key's
``numpy.dtypes.UInt32DType``) for that one load. The export itself is pickle-free
(safetensors).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dml_study.config import ConfigError, ExperimentConfig, config_from_dict
from dml_study.models import Embedder, create_embedder
from dml_study.models.exported import (
    Architecture,
    ExportDamagedError,
    ExportError,
    ExportMissingError,
)
from dml_study.models.pretrained import resolve_backbone
from dml_study.training.run_dir import RunDirectory

Which = Literal["final", "best"]
WHICH: tuple[str, ...] = ("final", "best")

#: The globals :func:`load_checkpoint_weights` allows beyond torch's defaults: NumPy's array
#: reconstruction, for the legacy RNG state ``np.random.get_state()`` saved in ``last.pt``.
NUMPY_SAFE_GLOBALS: tuple[Any, ...] = (
    getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: the MT19937 key's dtype
)


@dataclass
class RunWeights:
    """What an export takes from a run directory.

    Attributes:
        run_dir: the run directory.
        config: its resolved config (``config.yaml``).
        tier: ``"fine-tuned"`` or ``"frozen"``.
        which: ``"final"`` or ``"best"`` weights.
        epoch: the epoch those weights are from.
        checkpoint: the file they were read from, relative to the run directory.
        embedder: the trained network (eval mode, CPU, float32).
        proxies: (C, d) float32 proxies, one row per training class in label order.
        architecture: what ``create_embedder(weights=...)`` must rebuild.
        channels_last: whether the run evaluated the network in channels-last memory format
            (it changes CPU convolution kernels, hence the last bits of the embeddings).
        pre_resize_shorter: the shorter side the run's decoded-image cache shrank images to
            before the eval transform (``None``: no cache, images went in as decoded).
        metrics: ``metrics.json``; provenance: ``provenance.json`` (``{}`` if absent).
    """

    run_dir: RunDirectory
    config: ExperimentConfig
    tier: str
    which: str
    epoch: int
    checkpoint: str
    embedder: Embedder
    proxies: torch.Tensor
    architecture: Architecture
    channels_last: bool
    pre_resize_shorter: int | None
    metrics: dict[str, Any]
    provenance: dict[str, Any]


def load_checkpoint_weights(path: str | Path) -> dict[str, Any]:
    """A training checkpoint read with ``torch.load(weights_only=True)`` (see module doc).

    Raises :class:`ExportMissingError` for a missing file and :class:`ExportDamagedError`
    for one torch's restricted unpickler refuses or cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportMissingError(f"checkpoint {path} does not exist; the run was not trained "
                                 "to the end here, or its checkpoints were removed")
    try:
        with torch.serialization.safe_globals(list(NUMPY_SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "got <" in line), lines[0] if lines else "")
        raise ExportDamagedError(
            f"cannot read checkpoint {path} with weights_only=True ({reason.strip()[:300]}); "
            "the file is damaged or was not written by dml_study's trainer"
        ) from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportDamagedError(f"cannot read {path}: {err}") from err


def read_run_config(run_dir: RunDirectory) -> ExperimentConfig:
    """The run's resolved config from ``config.yaml``."""
    import yaml

    if not run_dir.config.is_file():
        raise ExportMissingError(f"{run_dir.path} has no config.yaml: not a run directory "
                                 "(runs live in <results_dir>/runs/<run_name>/)")
    try:
        return config_from_dict(yaml.safe_load(run_dir.config.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError) as err:
        raise ExportDamagedError(f"cannot read {run_dir.config}: {err}") from err


def load_run(run_dir: str | Path, which: Which = "final") -> RunWeights:
    """The trained network and proxies of a *finished* run (``metrics.json`` present).

    Raises :class:`~dml_study.models.exported.ExportError` subclasses naming the file and the
    fix: not a run directory, run unfinished, checkpoint or head missing or damaged.
    """
    if which not in WHICH:
        raise ExportError(f"weights={which!r}: choose one of {', '.join(WHICH)}")
    rd = RunDirectory(Path(run_dir).expanduser())
    if not rd.path.is_dir():
        raise ExportMissingError(f"run directory {rd.path} does not exist")
    config = read_run_config(rd)
    if not rd.is_finished():
        raise ExportError(
            f"run {rd.path} is not finished (no metrics.json): resume it to the end with the "
            "same command that started it, then export"
        )
    metrics = _read_json(rd.metrics)
    provenance = _read_json(rd.provenance) if rd.provenance.is_file() else {}
    if metrics.get("tier") == "frozen" or provenance.get("tier") == "frozen":
        return _frozen_run(rd, config, which, metrics, provenance)
    return _fine_tuned_run(rd, config, which, metrics, provenance)


def _architecture(embedder: Embedder, config: ExperimentConfig, kwargs: dict[str, Any],
                  timm_architecture: str) -> Architecture:
    standard = {"backbone", "embedding_dim", "pretrained", "pretrained_path", "l2_normalize",
                "img_size", "patch_size", "input_size", "freeze_patch_embed", "freeze_bn",
                "freeze_backbone"}
    return Architecture(
        backbone=config.model.backbone,
        timm_architecture=timm_architecture,
        feature_dim=embedder.feature_dim,
        embedding_dim=embedder.embedding_dim,
        head="identity" if isinstance(embedder.head, torch.nn.Identity) else "linear",
        l2_normalize=bool(embedder.l2_normalize),
        img_size=kwargs.get("img_size"),
        patch_size=kwargs.get("patch_size"),
        input_size=kwargs.get("input_size"),
        timm_kwargs={k: v for k, v in kwargs.items() if k not in standard},
    )


def _rebuilt(kwargs: dict[str, Any]) -> tuple[Embedder, str]:
    """The trainer's network without its pretrained weights (every tensor is loaded next)."""
    arch, norm = resolve_backbone(kwargs["backbone"], kwargs["pretrained"],
                                  kwargs["pretrained_path"])
    build = {**kwargs, "backbone": arch, "pretrained": False, "pretrained_path": None}
    embedder = create_embedder(**build)
    embedder.data_config.update(norm)  # the mean/std of the weights training started from
    return embedder, arch


def _load_state(embedder: Embedder, state: dict[str, Any], path: Path) -> None:
    try:
        embedder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ExportDamagedError(
            f"the model weights in {path} do not fit the network its config.yaml describes "
            f"({str(err).splitlines()[0][:300]}); was the run trained with another timm?"
        ) from err


def _fine_tuned_run(rd: RunDirectory, config: ExperimentConfig, which: str,
                    metrics: dict[str, Any], provenance: dict[str, Any]) -> RunWeights:
    from dml_study.training.pipeline import embedder_arguments

    path = rd.last_checkpoint if which == "final" else rd.best_checkpoint
    state = load_checkpoint_weights(path)
    for key in ("model", "loss"):
        if key not in state:
            raise ExportDamagedError(f"checkpoint {path} has no {key!r} entry; not a "
                                     "dml_study training checkpoint")
    kwargs = embedder_arguments(config)
    embedder, arch = _rebuilt(kwargs)
    _load_state(embedder, state["model"], path)
    proxies = state["loss"].get("proxies")
    if proxies is None:
        raise ExportDamagedError(f"checkpoint {path} holds no proxies")
    epoch = int(state["epoch"] if which == "final" else state.get("epoch") or 0)
    if which == "final" and epoch != config.schedule.epochs:
        raise ExportDamagedError(f"{path} is at epoch {epoch}, the run has "
                                 f"{config.schedule.epochs}: the checkpoint is not the final one")
    if which == "final" and rd.proxies.is_file() and not np.array_equal(
            np.load(rd.proxies), proxies.numpy()):
        raise ExportDamagedError(f"{path} and {rd.proxies} hold different proxies: the run "
                                 "directory mixes two trainings; re-train the run")
    # As Trainer._use_channels_last decided it, on the device the run trained on.
    mode = config.run.channels_last
    convolutional = not hasattr(embedder.backbone, "patch_embed")
    on_cuda = str(provenance.get("run_device", "cpu")).startswith("cuda")
    channels_last = mode == "on" or (mode == "auto" and (on_cuda or convolutional))
    d = config.data
    return RunWeights(
        run_dir=rd, config=config, tier="fine-tuned", which=which, epoch=epoch,
        checkpoint=str(path.relative_to(rd.path)), embedder=embedder.eval(),
        proxies=proxies.detach().float().cpu(),
        architecture=_architecture(embedder, config, kwargs, arch),
        channels_last=channels_last,
        pre_resize_shorter=round(d.image_size * d.resize_ratio) if d.cache_decoded else None,
        metrics=metrics, provenance=provenance,
    )


def frozen_backbone_arguments(config: ExperimentConfig) -> dict[str, Any]:
    """The ``create_embedder`` arguments of the frozen tier's feature extractor.

    Mirrors :func:`dml_study.study.tiers.frozen.extract_features` (no head, no input-size
    adaptation, the backbone frozen and in eval mode).
    """
    m = config.model
    return {"backbone": m.backbone, "embedding_dim": None, "pretrained": m.pretrained,
            "pretrained_path": m.pretrained_path, "freeze_backbone": True,
            **dict(m.timm_kwargs)}


def _frozen_run(rd: RunDirectory, config: ExperimentConfig, which: str,
                metrics: dict[str, Any], provenance: dict[str, Any]) -> RunWeights:
    from dml_study.models import PretrainedWeightsUnavailable

    if which != "final":
        raise ExportError(f"run {rd.path} is a frozen-tier run: it keeps only its final head "
                          "and proxies, so weights='best' is not available; export 'final'")
    kwargs = frozen_backbone_arguments(config)
    try:
        backbone = create_embedder(**kwargs)
    except (PretrainedWeightsUnavailable, ImportError, FileNotFoundError) as err:
        raise ExportMissingError(
            f"run {rd.path} is a frozen-tier run, whose export includes the pretrained "
            f"backbone {config.model.backbone!r}, and it cannot be built here: "
            f"{str(err).splitlines()[0]}"
        ) from err
    arch, _ = resolve_backbone(config.model.backbone, config.model.pretrained,
                               config.model.pretrained_path)
    width = config.model.embedding_dim
    embedder = Embedder(backbone.backbone, width, False, backbone.data_config,
                        freeze_backbone=True,
                        frozen_params={n for n, _ in backbone.backbone.named_parameters()})
    if not isinstance(embedder.head, torch.nn.Identity):
        if not rd.head_weights.is_file():
            raise ExportMissingError(
                f"run {rd.path} is a frozen-tier run without {rd.head_weights.name} (written "
                "by runs since the exporter exists): its trained head is lost; re-train the "
                "run (delete the directory and run the study again), then export"
            )
        from safetensors.torch import load_file

        head = load_file(str(rd.head_weights), device="cpu")
        try:
            embedder.head.load_state_dict(head, strict=True)
        except RuntimeError as err:
            raise ExportDamagedError(f"{rd.head_weights} does not fit a Linear("
                                     f"{embedder.feature_dim}, {width}) head: {err}") from err
    if not rd.proxies.is_file():
        raise ExportMissingError(f"{rd.proxies} does not exist; re-train the run")
    proxies = torch.from_numpy(np.load(rd.proxies)).float()
    kwargs = {**kwargs, "embedding_dim": embedder.embedding_dim}
    return RunWeights(
        run_dir=rd, config=config, tier="frozen", which=which,
        epoch=int(config.schedule.epochs), checkpoint=rd.head_weights.name
        if rd.head_weights.is_file() else rd.proxies.name,
        embedder=embedder.eval(), proxies=proxies,
        architecture=_architecture(embedder, config, kwargs, arch),
        channels_last=False, pre_resize_shorter=None,  # extraction: no decoded cache
        metrics=metrics, provenance=provenance,
    )
