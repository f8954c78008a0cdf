"""Typed experiment configuration: dataclasses, per-dataset presets, overrides, validation.

One :class:`ExperimentConfig` describes a training run completely; it is composed of
:class:`DataConfig`, :class:`ModelConfig`, :class:`LossConfig`, :class:`OptimConfig`,
:class:`ScheduleConfig`, :class:`EvalConfig` and :class:`RunConfig`. Every run saves its
resolved config as ``config.yaml`` next to its results, so a number can be reproduced with
``load_config(yaml_path=".../config.yaml")``.

Resolution order in :func:`load_config` (later wins):

1. dataclass defaults,
2. the dataset preset ``dml_study/presets/<dataset>.yaml`` (each value cites its source),
3. a user YAML file (same nested layout as the presets),
4. keyword overrides. Keys are either dotted (``"optim.lr"``, ``"loss.so_lambda"``) or flat
   field names (``lr``, ``so_lambda``, ``batch_size``); flat names are unique across sections
   except ``name``, for which the aliases ``loss`` (= ``loss.name``) and ``schedule``
   (= ``schedule.name``) exist. ``None`` values are ignored ("use the preset"), which is how
   the papermill parameters cell and the CLI pass "not set".

Validation happens before anything is trained: unknown keys (the error lists the valid ones),
wrong types and out-of-range values raise :class:`ConfigError` naming the key.
Dataset-dependent checks (enough classes for a batch; a warning when ``m_per_class`` exceeds
the smallest class, whose images the sampler then repeats) live in
:func:`validate_against_labels`, which the trainer calls once the training labels are known.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import yaml

from dml_study.typed_fields import check_choice, close_matches, coerce, field_types, flatten

#: Parameters of ``notebooks/02_train.ipynb``, in the order of its ``parameters`` cell (which
#: assigns exactly these; its config cell hands them to :func:`config_from_parameters`).
#: ``None`` means "from the dataset preset"; ``config_yaml`` is a user YAML file and
#: ``overrides`` a ``{"dotted.or.flat.key": value}`` dict of any further config keys.
TRAIN_PARAMETERS: tuple[str, ...] = (
    "dataset",
    "data_root",
    "backbone",
    "pretrained",
    "loss",
    "so_lambda",
    "so_gram",
    "so_normalize",
    "so_reduction",
    "proxy_init",
    "embedding_dim",
    "epochs",
    "batch_size",
    "m_per_class",
    "lr",
    "image_size",
    "seed",
    "split",
    "val_folds",
    "val_fold",
    "val_seed",
    "max_train_per_class",
    "max_test_per_class",
    "run_name",
    "results_dir",
    "device",
    "num_workers",
    "on_corrupt",
    "check_images",
    "quiet",
    "overwrite",
    "allow_lr_change",
    "config_yaml",
    "overrides",
)


#: Config keys that change neither a run's result nor which run it is: where it is stored,
#: on what device and with how many loader processes it runs, how much it prints, and
#: whether a finished run may be replaced. Both lists below start from these.
RESULT_NEUTRAL_KEYS: frozenset[str] = frozenset({
    "data.num_workers", "run.device", "run.quiet", "run.overwrite", "run.results_dir",
})

#: Keys left out of a run's identity (the hash in a study's run names,
#: :func:`run_name`): the result-neutral ones, the data location
#: (so a study moved to another machine reuses its finished runs) and the run's name (which
#: is derived from the identity). Neither may change on resume: the trainer cannot tell
#: whether other files under another root are the same data, and the name is the directory.
IDENTITY_NEUTRAL_KEYS: frozenset[str] = RESULT_NEUTRAL_KEYS | {"data.data_root", "run.run_name"}

#: Keys added after runs were named, left out of a run's identity while they hold the value
#: that reproduces the runs before them (so those runs keep their names): evaluating the
#: test split, no per-class subsets. Any other value is part of the identity.
IDENTITY_OMITTED_DEFAULTS: dict[str, Any] = {
    "data.split": "test", "data.max_train_per_class": None, "data.max_test_per_class": None,
}

#: Keys that only a ``data.split: validation`` run reads (which fold of which folds under
#: which seed): a test-split run leaves them out of its identity, since they cannot change it.
VALIDATION_ONLY_KEYS: frozenset[str] = frozenset({
    "data.val_folds", "data.val_fold", "data.val_seed",
})

#: Keys that may differ between a run and its resumption (the trainer refuses other
#: changes): the result-neutral ones plus run-control switches a resumed process may need
#: to change — evaluation batch size and decoded-image cache (memory), up-front image
#: checks, ``torch.compile`` (speed; float rounding may differ), checkpoint frequency,
#: the test-only ``stop_after_steps`` and ``allow_lr_change``. They stay in a run's
#: identity: two fresh runs that differ in them are not guaranteed to be bit-identical.
RESUME_MUTABLE_KEYS: frozenset[str] = RESULT_NEUTRAL_KEYS | {
    "data.eval_batch_size", "data.check_images", "data.cache_decoded", "run.compile",
    "run.checkpoint_every_steps", "run.stop_after_steps", "run.allow_lr_change",
}


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and the valid choices."""


@dataclass
class DataConfig:
    """Which data, at which size, in which batches."""

    #: One of :func:`dml_study.data.list_datasets` (checked by :func:`validate`).
    dataset: str = "icons"
    #: Root of the on-disk datasets; ``None`` → env ``DML_DATA_ROOT`` or ``./data``.
    data_root: str | None = None
    #: What a run evaluates (:data:`dml_study.data.splits.SPLITS`, docs/validation.md):
    #: ``"test"`` trains on every training class and evaluates the test split (In-Shop:
    #: query vs gallery); ``"validation"`` trains on the training classes outside fold
    #: ``val_fold`` and evaluates retrieval among the training images of that fold's
    #: classes (class-disjoint validation, the Metric Learning Reality Check protocol:
    #: Musgrave, Belongie & Lim, ECCV 2020); the test split is then never opened.
    split: str = "test"
    #: Class-disjoint folds of the training classes, i.e. 1/val_folds of them held out
    #: [MLRC: 4 folds (powerful-benchmarker ``num_training_partitions: 4``), 25 %].
    val_folds: int = 4
    #: The validation fold, ``0 <= val_fold < val_folds`` [MLRC: each of the 4 in turn].
    val_fold: int = 0
    #: Seed of the class permutation the folds are cut from [ours: 0].
    val_seed: int = 0
    #: At most this many images per training class (seeded, every class kept; ``None`` =
    #: all): the frozen tier's glyph subset rule (:func:`dml_study.data.subset_per_class`,
    #: seed 0 = its default ``feature_seed``); applied before the validation cut.
    max_train_per_class: int | None = None
    #: At most this many images per evaluated class (seed 1 = the frozen tier's
    #: ``feature_seed + 1``): of the test split, or of the held-out validation classes.
    max_test_per_class: int | None = None
    image_size: int = 224
    #: Eval resize = round(image_size * resize_ratio) followed by a centre crop.
    resize_ratio: float = 256 / 224
    #: Per-process (per-rank) batch size; under DDP the loss sees ``world_size × batch_size``.
    batch_size: int = 180
    #: Images per class in a batch (m-per-class sampling); 0 → uniformly random batches.
    m_per_class: int = 4
    num_workers: int = 0
    #: Keep decoded, resized images in memory (fast for small datasets such as icons).
    cache_decoded: bool = False
    #: ``False`` trains on the deterministic eval transform (no random crop/flip).
    augment: bool = True
    #: Area range of the training RandomResizedCrop (torchvision's default is (0.08, 1)).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    eval_batch_size: int = 256
    #: A corrupt (undecodable) image: ``raise`` = one error naming every bad file before
    #: training (or naming the file when it is loaded, with ``check_images: false``),
    #: ``skip`` = drop bad images with a warning.
    on_corrupt: Literal["raise", "skip"] = "raise"
    #: Screen every image of every split before the run directory is created, so corrupt
    #: files fail (or are skipped) at start-up rather than mid-epoch. ``None`` (the default)
    #: and ``true`` screen; files unchanged since an earlier screening (same size and mtime,
    #: ``<cache>/verified/<dataset>.json``) are not decoded again. ``false`` skips it. (The
    #: default stays ``None`` rather than ``true`` so that run identities do not change.)
    check_images: bool | None = None


@dataclass
class ModelConfig:
    """Arguments of :func:`dml_study.models.create_embedder`."""

    backbone: str = "deit_small_distilled_patch16_224"
    pretrained: bool = True
    pretrained_path: str | None = None
    #: Projection head output size; ``None`` → backbone feature size, no projection.
    embedding_dim: int | None = 384
    l2_normalize: bool = False
    #: ViT patch size override (tiny test models); ``None`` → the backbone's own.
    patch_size: int | None = None
    #: Build a ViT for ``data.image_size`` instead of its native size (pos-embed resampled).
    set_img_size: bool = False
    freeze_patch_embed: bool = False
    freeze_bn: bool = False
    #: Extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``).
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Arguments of :func:`dml_study.losses.create_loss`."""

    #: One of :func:`dml_study.losses.list_losses` (checked by :func:`validate`).
    name: str = "proxy_anchor"
    #: Soft Orthogonality weight λ in λ·‖P̂P̂ᵀ − I‖²_F (0 = off).
    so_lambda: float = 0.0
    #: One of :data:`dml_study.losses.soft_orthogonality.GRAMS` (checked by :func:`validate`).
    so_gram: str = "classes"
    so_normalize: bool = True
    #: ``sum`` (plain ‖P̂P̂ᵀ − I‖²_F), ``mean`` (÷ C(C−1)) or ``excess_mean`` ((· − floor) ÷ C(C−1));
    #: see :mod:`dml_study.losses.soft_orthogonality` (its ``REDUCTIONS``).
    so_reduction: str = "sum"
    #: One of :func:`dml_study.losses.base.list_proxy_inits` (checked by :func:`validate`).
    proxy_init: str = "kaiming"
    #: Further loss-specific keyword arguments (e.g. ``margin``, ``alpha``, ``scale``).
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with parameter groups: backbone at ``lr``, head and proxies at multiples."""

    lr: float = 3e-5
    head_lr_mult: float = 1.0
    proxy_lr_mult: float = 100.0
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: Clip the global gradient norm to this value; ``None`` → no clipping.
    grad_clip_norm: float | None = 3.0


@dataclass
class ScheduleConfig:
    """Epochs, learning-rate schedule (per step) and frozen warm-up epochs."""

    epochs: int = 60
    name: Literal["cosine", "step", "constant"] = "cosine"
    #: Linear learning-rate warm-up length in epochs (may be fractional).
    warmup_epochs: float = 0.0
    #: First epochs train only head and proxies (backbone frozen), as in Proxy Anchor.
    freeze_backbone_epochs: int = 1
    #: ``step`` schedule: multiply by ``gamma`` every ``step_epochs`` epochs.
    step_epochs: int = 10
    gamma: float = 0.5
    #: ``cosine`` schedule decays to ``min_lr_ratio × lr``.
    min_lr_ratio: float = 0.0


@dataclass
class EvalConfig:
    """When and how to evaluate."""

    every_n_epochs: int = 1
    #: Recall@K cut-offs; ``None`` → the dataset's standard ones.
    ks: tuple[int, ...] | None = None
    nmi: bool = True
    #: Evaluate the model before training (metrics.json["untrained"]).
    untrained: bool = True
    save_test_embeddings: bool = True
    #: At the end, R@1 of every training class on the training images
    #: (``train_class_recall.npy``; the SO motivation claim). Costs one pass over the
    #: training set.
    train_class_recall: bool = False


@dataclass
class RunConfig:
    """Where results go, seeds, device, and run-control switches."""

    #: Run directory name under ``<results_dir>/runs/``; ``None`` → derived from the config.
    run_name: str | None = None
    #: ``None`` → env ``DML_RESULTS_DIR``, else ``results/`` of the source checkout or cwd.
    results_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    #: bf16 autocast: ``auto`` = on for CUDA, off for CPU.
    amp: Literal["auto", "bf16", "off"] = "auto"
    #: channels-last memory format: ``auto`` = on CUDA, and on CPU for convolutional
    #: backbones (measured 2x faster training steps for EfficientNet-Lite0 on CPU).
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    quiet: bool = False
    #: Replace a finished run of the same name (otherwise it is an error).
    overwrite: bool = False
    #: Resume an interrupted run with a different ``optim.lr`` (e.g. lower, after a
    #: non-finite loss): every group's lr is scaled by new/old from the checkpoint on; the
    #: change is recorded in ``provenance.json["lr_changes"]``. Otherwise a changed lr is
    #: refused on resume.
    allow_lr_change: bool = False
    #: Also write ``checkpoints/last.pt`` every N optimiser steps (0 = end of epoch only).
    checkpoint_every_steps: int = 0
    #: Testing/debugging: stop with :class:`~dml_study.training.errors.StopRequested` after
    #: this many global steps *without* saving — simulates a killed process.
    stop_after_steps: int | None = None


@dataclass
class ExperimentConfig:
    """A complete, validated description of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-Python dict (tuples become lists) suitable for YAML/JSON."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for display and tables."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }

    def default_run_name(self) -> str:
        """A deterministic name, so that re-running the same recipe resumes the same run.

        The study's name for the same config (:func:`run_name`): a run started by hand
        and the study's cell of the same recipe are one run directory.
        """
        return run_name(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}

#: Flat aliases for names that are ambiguous or shorter to type.
ALIASES: dict[str, str] = {"loss": "loss.name", "schedule": "schedule.name"}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _dotted_keys() -> tuple[str, ...]:
    # The sections' dataclasses do not change at run time: computed once (a study's grid
    # resolves hundreds of thousands of keys).
    return tuple(f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls))


@functools.cache
def _flat_keys() -> types.MappingProxyType[str, str]:
    counts: dict[str, list[str]] = {}
    for dotted in _dotted_keys():
        counts.setdefault(dotted.split(".")[1], []).append(dotted)
    mapping = {name: dots[0] for name, dots in counts.items() if len(dots) == 1}
    mapping.update(ALIASES)
    return types.MappingProxyType(mapping)


@functools.cache
def _dotted_set() -> frozenset[str]:
    return frozenset(_dotted_keys())


def dotted_keys() -> list[str]:
    """Every valid dotted key, e.g. ``"optim.lr"``."""
    return list(_dotted_keys())


def flat_keys() -> dict[str, str]:
    """Valid flat key → dotted key (unique field names plus :data:`ALIASES`)."""
    return dict(_flat_keys())


def resolve_key(key: str) -> str:
    """Map a flat or dotted key to its dotted form or raise a :class:`ConfigError`."""
    if key in _dotted_set():
        return key
    flat = _flat_keys()
    if key in flat:
        return flat[key]
    valid_dotted = dotted_keys()
    close = close_matches(key, sorted(flat) + valid_dotted, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(flat))} "
        f"(or dotted: {', '.join(valid_dotted)})"
    )


# --------------------------------------------------------------------------- types


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; return it normalised (list→tuple, int→float)."""
    return coerce(value, annotation, key, ConfigError)


def parse_cli_value(raw: str, dotted: str) -> Any:
    """A command-line string as a typed value for ``dotted``.

    Strings stay strings, numbers are parsed with ``int``/``float`` (so ``3e-5`` works, which
    YAML 1.1 would read as a string), ``none``/``null`` is ``None`` for optional keys, and
    everything else (booleans, lists, mappings) uses YAML syntax.
    """
    section, name = dotted.split(".")
    annotation = field_types(SECTIONS[section])[name]
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (Union, types.UnionType)
    if raw.lower() in {"none", "null", "~"} and is_union and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)] if is_union else [annotation]
    for option in options:
        literal = typing.get_origin(option) is Literal
        if option is str or (literal and all(isinstance(a, str) for a in typing.get_args(option))):
            return raw
        for number in (int, float):
            if option is number:
                try:
                    return number(raw)
                except ValueError:
                    pass
    return yaml.safe_load(raw)


# --------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Datasets with a preset file."""
    folder = resources.files("dml_study") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(dataset: str) -> Path:
    """Path of the preset YAML of ``dataset``."""
    if dataset not in preset_names():
        raise ConfigError(f"data.dataset: no preset for {dataset!r}; valid: {preset_names()}")
    return Path(str(resources.files("dml_study") / "presets" / f"{dataset}.yaml"))


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file, parsed once per version of the file: a study's grid builds
    thousands of configs from the same preset, and parsing it each time was most of the cost
    (a copy is returned, keyed by the file's path, size and modification time)."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None:
        return _parse_yaml(str(path))
    return copy.deepcopy(_parse_yaml_cached(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _parse_yaml_cached(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    return _parse_yaml(path)


def _parse_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        content = yaml.safe_load(fh) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(content).__name__}")
    return content


def _check_sections(nested: dict[str, Any], origin: str) -> None:
    """Every top-level key is a known section whose body is a mapping (or empty)."""
    for section, body in nested.items():
        if section not in SECTIONS:
            close = close_matches(section, SECTIONS)
            hint = f". Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{origin}: unknown section {section!r}; valid sections: "
                f"{', '.join(SECTIONS)}{hint}"
            )
        if body is not None and not isinstance(body, dict):
            raise ConfigError(
                f"{origin}: section {section!r} must be a mapping of keys to values "
                f"(e.g. '{section}:' followed by indented 'key: value' lines), "
                f"got {type(body).__name__} {body!r}"
            )


def _apply_nested(values: dict[str, dict[str, Any]], nested: dict[str, Any], origin: str) -> None:
    _check_sections(nested, origin)
    for section, body in nested.items():
        if body is None:
            continue
        for name, value in body.items():
            values[section][name] = value  # unknown names are reported by build_config


def load_config(
    dataset: str | None = None, yaml_path: str | Path | None = None, **overrides: Any
) -> ExperimentConfig:
    """Resolve and validate a config: defaults < preset(dataset) < YAML file < overrides.

    ``dataset`` may also come from ``overrides`` (``dataset=...``) or the YAML file's
    ``data.dataset``; otherwise the embedded default ``"icons"`` is used. Overrides with value
    ``None`` are ignored. Raises :class:`ConfigError` on unknown keys, wrong types or
    out-of-range values.
    """
    resolved_overrides: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = resolve_key(key)
        if value is not None:
            resolved_overrides[dotted] = value
    user = _read_yaml(yaml_path) if yaml_path is not None else {}
    _check_sections(user, str(yaml_path))
    if dataset is None:
        dataset = resolved_overrides.get("data.dataset") or (user.get("data") or {}).get(
            "dataset"
        )
    dataset = dataset or DataConfig.dataset
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    _apply_nested(values, _read_yaml(preset_path(dataset)), f"preset {dataset}")
    _apply_nested(values, user, str(yaml_path))
    values["data"]["dataset"] = dataset
    for dotted, value in resolved_overrides.items():
        section, name = dotted.split(".")
        values[section][name] = value
    return build_config(values)


def config_from_parameters(params: dict[str, Any]) -> ExperimentConfig:
    """The config ``02_train`` trains, from its parameters (names of :data:`TRAIN_PARAMETERS`).

    ``load_config(dataset, yaml_path=config_yaml, **params, **overrides)``: ``None`` values
    (and missing names) take the dataset preset; without a ``run_name`` the run is named by
    :meth:`ExperimentConfig.default_run_name`. The training notebook and the study
    (:func:`dml_study.study.plan.grid.experiment_config`) both build their config here, so the
    run a study names is the run the notebook trains. Unknown names raise :class:`ConfigError`.
    """
    unknown = sorted(set(params) - set(TRAIN_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown training parameter(s) {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(TRAIN_PARAMETERS)}"
        )
    kw = {k: v for k, v in params.items() if k not in ("dataset", "config_yaml", "overrides")}
    config = load_config(params.get("dataset"), yaml_path=params.get("config_yaml"), **kw,
                         **(params.get("overrides") or {}))
    if config.run.run_name is None:
        config = replace(config, run_name=config.default_run_name())
    return config


def run_identity(config: ExperimentConfig) -> dict[str, Any]:
    """Every setting that affects a run's result: the flat config without
    :data:`IDENTITY_NEUTRAL_KEYS` (preset values included), without the
    :data:`VALIDATION_ONLY_KEYS` of a test-split run, and without the keys of
    :data:`IDENTITY_OMITTED_DEFAULTS` that hold their omitted value (so a run that evaluates
    the test split without subsets has the identity, and name, it had before these keys)."""
    identity = {
        k: v for k, v in flatten(config.to_dict()).items() if k not in IDENTITY_NEUTRAL_KEYS
    }
    if config.data.split != "validation":
        identity = {k: v for k, v in identity.items() if k not in VALIDATION_ONLY_KEYS}
    for key, omitted in IDENTITY_OMITTED_DEFAULTS.items():
        if key in identity and identity[key] == omitted:
            del identity[key]
    return identity


def run_name(config: ExperimentConfig, tier: dict[str, Any] | None = None) -> str:
    """The one run-naming scheme: ``<dataset>-<loss>-so<λ>[-gdims][-nonorm][-<init>]-d<dim>
    [-val<fold>]-s<seed>-<hash8>`` (``val<fold>``: a ``data.split: validation`` run).

    The hash (SHA-1 of :func:`run_identity`, 8 hex digits) is the identity: a run is reused
    only if every setting that affects its result is the same, so changing a dataset preset
    retrains instead of silently reusing a stale run, and a value given explicitly or taken
    from the preset names the same run. The tags before it are for humans (the loss by its
    class's ``short_name``, e.g. ``pa``). ``tier`` (the study's frozen tier: ``{"tier":
    "frozen", "views": …}``) joins the identity and prefixes the name with ``frozen-``.
    Used by :meth:`ExperimentConfig.default_run_name` and the study's grid.
    """
    from dml_study.losses.registry import LOSSES  # imports torch: asked only here

    identity = run_identity(config)
    if tier:
        identity = {**identity, "tier": tier}
    digest = hashlib.sha1(
        json.dumps(identity, sort_keys=True, default=str).encode("utf-8")
    ).hexdigest()[:8]
    lo, dim = config.loss, config.model.embedding_dim
    parts = [str(tier.get("tier", "tier"))] if tier else []
    parts += [config.data.dataset, LOSSES[lo.name].short_name, f"so{float(lo.so_lambda):g}"]
    if lo.so_gram == "dims":
        parts.append("gdims")
    if lo.so_normalize is False:
        parts.append("nonorm")
    if lo.proxy_init != LossConfig.proxy_init:
        parts.append(lo.proxy_init)
    if dim is not None:
        parts.append(f"d{dim}")
    if config.data.split == "validation":
        parts.append(f"val{config.data.val_fold}")
    parts += [f"s{config.run.seed}", digest]
    return "-".join(parts)


def build_config(values: dict[str, dict[str, Any]]) -> ExperimentConfig:
    """Type-check nested ``values`` against the dataclasses and validate ranges."""
    sections = {}
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        given = values.get(section, {})
        kwargs = {}
        for name, value in given.items():
            key = f"{section}.{name}"
            if name not in hints:
                resolve_key(key)  # raises with the list of valid keys
            kwargs[name] = _coerce(value, hints[name], key)
        sections[section] = cls(**kwargs)
    config = ExperimentConfig(**sections)
    validate(config)
    return config


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Inverse of :meth:`ExperimentConfig.to_dict` (validated)."""
    _check_sections(d, "config")
    return build_config({k: v or {} for k, v in d.items()})


def replace(config: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """A copy of ``config`` with flat/dotted ``overrides`` applied (``None`` ignored), validated."""
    values = config.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        section, name = resolve_key(key).split(".")
        values[section][name] = value
    return build_config(values)


# --------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def _require_finite(config: ExperimentConfig) -> None:
    """No NaN/±inf in any number (``--lr inf`` would otherwise train on garbage)."""
    for key, value in config.flat().items():
        numbers = value if isinstance(value, list) else (
            list(value.values()) if isinstance(value, dict) else [value]
        )
        for number in numbers:
            if isinstance(number, float) and not np.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")


def validate(config: ExperimentConfig) -> None:
    """Range and consistency checks that need no data; raises :class:`ConfigError`.

    Names are checked against their one list: ``data.dataset`` against the data registry
    (:func:`dml_study.data.list_datasets`), ``loss.name`` and ``loss.proxy_init`` against the
    loss registry and :data:`dml_study.losses.base.PROXY_INITS`, ``loss.so_gram`` and
    ``loss.so_reduction`` against :mod:`dml_study.losses.soft_orthogonality`.
    """
    _require_finite(config)
    _validate_data(config.data)
    _validate_model_and_loss(config.model, config.loss)
    _validate_optim(config.optim)
    _validate_schedule_and_eval(config.schedule, config.eval)
    _validate_run(config.run)


def _validate_data(d: DataConfig) -> None:
    # The registries import torch: asked here, not at import time, to keep this module light.
    from dml_study.data.registry import list_datasets

    check_choice(d.dataset, list_datasets(), "data.dataset", ConfigError)
    _require(d.image_size >= 8, "data.image_size", f"must be >= 8, got {d.image_size}")
    _require(d.resize_ratio >= 1.0, "data.resize_ratio", f"must be >= 1, got {d.resize_ratio}")
    _require(d.batch_size >= 2, "data.batch_size", f"must be >= 2, got {d.batch_size}")
    _require(d.m_per_class >= 0, "data.m_per_class", f"must be >= 0, got {d.m_per_class}")
    if d.m_per_class > 0:
        _require(
            d.batch_size % d.m_per_class == 0,
            "data.batch_size",
            f"{d.batch_size} is not divisible by data.m_per_class={d.m_per_class}",
        )
        _require(
            d.batch_size // d.m_per_class >= 2,
            "data.m_per_class",
            f"a batch of {d.batch_size} with m_per_class={d.m_per_class} holds < 2 classes",
        )
    lo_s, hi_s = d.crop_scale
    _require(
        0 < lo_s <= hi_s <= 1, "data.crop_scale", f"need 0 < min <= max <= 1: {d.crop_scale}"
    )
    _require(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _require(d.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
    _validate_split(d)


def _validate_split(d: DataConfig) -> None:
    """``data.split`` and its folds; the per-class limits (retrieval needs pairs)."""
    from dml_study.data.registry import dataset_protocol
    from dml_study.data.splits import SPLITS

    check_choice(d.split, SPLITS, "data.split", ConfigError)
    _require(d.val_folds >= 2, "data.val_folds", f"must be >= 2, got {d.val_folds}")
    _require(0 <= d.val_fold < d.val_folds, "data.val_fold",
             f"must lie in [0, val_folds={d.val_folds}), got {d.val_fold}")
    for key in ("max_train_per_class", "max_test_per_class"):
        limit = getattr(d, key)
        if limit is not None:
            _require(limit >= 2, f"data.{key}",
                     f"must be >= 2 (retrieval needs pairs) or null for all, got {limit}")
    if d.max_test_per_class is not None and d.split == "test":
        _require(
            dataset_protocol(d.dataset) == "self", "data.max_test_per_class",
            f"{d.dataset!r} is evaluated as query vs gallery, whose per-class subsets would "
            "not pair up; leave it null (or use split: validation, which evaluates "
            "self-retrieval among training images)",
        )


def _validate_model_and_loss(m: ModelConfig, lo: LossConfig) -> None:
    from dml_study.losses.base import list_proxy_inits
    from dml_study.losses.registry import list_losses
    from dml_study.losses.soft_orthogonality import GRAMS, REDUCTIONS

    if m.embedding_dim is not None:
        _require(m.embedding_dim >= 1, "model.embedding_dim", f"must be >= 1: {m.embedding_dim}")
    if m.patch_size is not None:
        _require(m.patch_size >= 1, "model.patch_size", "must be >= 1")
    check_choice(lo.name, list_losses(), "loss.name", ConfigError)
    check_choice(lo.proxy_init, list_proxy_inits(), "loss.proxy_init", ConfigError)
    check_choice(lo.so_gram, GRAMS, "loss.so_gram", ConfigError)
    check_choice(lo.so_reduction, REDUCTIONS, "loss.so_reduction", ConfigError)
    _require(lo.so_lambda >= 0, "loss.so_lambda", f"must be >= 0, got {lo.so_lambda}")


def _validate_optim(o: OptimConfig) -> None:
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(o.head_lr_mult > 0, "optim.head_lr_mult", f"must be > 0, got {o.head_lr_mult}")
    _require(o.proxy_lr_mult > 0, "optim.proxy_lr_mult", f"must be > 0, got {o.proxy_lr_mult}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(all(0 <= b < 1 for b in o.betas), "optim.betas", f"must lie in [0, 1), got {o.betas}")
    _require(o.eps > 0, "optim.eps", "must be > 0")
    if o.grad_clip_norm is not None:
        _require(o.grad_clip_norm > 0, "optim.grad_clip_norm", "must be > 0 (or null for off)")


def _validate_schedule_and_eval(s: ScheduleConfig, e: EvalConfig) -> None:
    _require(s.epochs >= 1, "schedule.epochs", f"must be >= 1, got {s.epochs}")
    _require(0 <= s.warmup_epochs <= s.epochs, "schedule.warmup_epochs", "must lie in [0, epochs]")
    _require(
        0 <= s.freeze_backbone_epochs <= s.epochs,
        "schedule.freeze_backbone_epochs",
        f"must lie in [0, epochs={s.epochs}], got {s.freeze_backbone_epochs}",
    )
    _require(s.step_epochs >= 1, "schedule.step_epochs", "must be >= 1")
    _require(0 < s.gamma <= 1, "schedule.gamma", f"must lie in (0, 1], got {s.gamma}")
    _require(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must lie in [0, 1]")
    _require(e.every_n_epochs >= 1, "eval.every_n_epochs", "must be >= 1")
    if e.ks is not None:
        _require(len(e.ks) > 0 and all(k >= 1 for k in e.ks), "eval.ks", "must be positive ints")


def _validate_run(r: RunConfig) -> None:
    _require(
        r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"),
        "run.device",
        f"{r.device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'",
    )
    if r.run_name is not None:
        _require(
            r.run_name not in {"", ".", ".."} and "/" not in r.run_name and "\\" not in r.run_name,
            "run.run_name",
            f"{r.run_name!r} must be a plain directory name",
        )
    _require(r.checkpoint_every_steps >= 0, "run.checkpoint_every_steps", "must be >= 0")
    if r.stop_after_steps is not None:
        _require(r.stop_after_steps >= 1, "run.stop_after_steps", "must be >= 1")


def validate_against_labels(config: ExperimentConfig, labels: np.ndarray) -> None:
    """Checks that need the training labels: enough images per class and enough classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    m = config.data.m_per_class
    if m > 0:
        smallest = int(counts.min())
        if m > smallest:
            small = int((counts < m).sum())
            # The sampler tops such classes up with replacement (see MPerClassBatchSampler),
            # so this trains; it is worth knowing because those batches repeat images.
            warnings.warn(
                f"data.m_per_class={m} is larger than the smallest training class of "
                f"{config.data.dataset!r} ({smallest} images; {small} of {len(counts)} classes "
                f"have fewer than {m}): their chunks are topped up by drawing their images "
                f"again (with replacement). Set m_per_class <= {smallest} to avoid repeats.",
                UserWarning,
                stacklevel=2,
            )
        classes_per_batch = config.data.batch_size // m
        _require(
            classes_per_batch <= len(counts),
            "data.batch_size",
            f"{config.data.batch_size} / m_per_class {m} = {classes_per_batch} classes per batch, "
            f"but the training split has only {len(counts)} classes",
        )
