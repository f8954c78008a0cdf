r"""The frozen-backbone tier: many seeds in seconds on cached backbone features.

Fine-tuning the backbone costs about a minute per CPU run, too much for the dozens of
paired seeds that a 95 % CI narrower than 1 pp needs (half-width :math:`t_{n-1}\,s/\sqrt n`:
with a paired sd of 0.4 pp that is about 10 seeds). The frozen tier keeps the backbone fixed
and trains only what the two papers are about, the **embedding head and the proxies**, with
the *same* loss builder (:func:`dml_study.losses.create_loss_from_config`), optimiser
parameter groups and schedule (:mod:`dml_study.training.optim`) and evaluation
(:func:`dml_study.evaluation.evaluate`) as the fine-tuned tier:

1. :func:`extract_features` embeds each training image ``views`` times with the seeded
   training augmentation (view ``v`` of image ``i`` is always the same crop) plus one
   evaluation view of every training and test image, through the pretrained backbone
   (pooled pre-logits), and caches the arrays under
   ``$DML_STUDY_CACHE/frozen_features/`` keyed by dataset, backbone, size and views, in
   two files: ``…-train.npz`` (training views, labels, class names) and ``…-test.npz``
   (test views and labels). A ``data.split: validation`` run reads only the training file
   and cuts it into kept and held-out classes (:func:`validation_features`, the rule of
   :mod:`dml_study.data.splits` that the fine-tuned tier uses too); reading a test file
   under the test-split guard raises.
2. :func:`train_frozen` trains ``head + proxies`` for ``schedule.epochs`` epochs of
   m-per-class batches; each sample of an epoch uses one of its cached views (drawn from
   ``(seed, epoch)``). After every epoch it evaluates the test split (validation runs: the
   held-out classes) and logs loss terms, learning rates, proxy orthogonality statistics
   and metrics, then writes a normal run directory (``config.yaml``, ``history.json/csv``,
   ``metrics.json`` with ``"tier": "frozen"`` and ``"split"``, ``proxies*.npy``,
   ``test_embeddings.npz`` with each row's test-split image index; validation runs:
   ``validation_embeddings.npz`` and ``validation_classes.json``) plus
   ``train_class_recall.npy`` (R@1 of every training
   class on the evaluation view of the training images, for the SO paper's motivation
   analysis) and ``head.safetensors`` (the trained head, which ``python -m
   dml_study.export`` joins to the pretrained backbone), so
   :mod:`~dml_study.study.analysis.collect` reads both tiers.

The features are those of the pretrained backbone (BatchNorm in eval mode), i.e. the model
the fine-tuned tier starts from, so the tier answers "what do SO / adaptive margins do to a
head and proxies on fixed features"; backbone adaptation is the fine-tuned tier's question.
Runs are deterministic on CPU: same seed, same numbers, on every machine (extraction and
training run under the numerical profile of :mod:`dml_study.determinism`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from dml_study import determinism
from dml_study.atomic_io import atomic_write_json, atomic_write_text, atomic_write_with
from dml_study.config import ExperimentConfig
from dml_study.data.splits import (
    EVAL_SUBSET_SEED,
    check_test_split_allowed,
    subset_per_class,
    validation_view,
)
from dml_study.evaluation import embed, evaluate
from dml_study.evaluation.per_class import per_class_recall_at_1
from dml_study.losses import ProxyLoss, create_loss_from_config, orthogonality_stats
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import (
    FeatureSettings,
    RunSpec,
    experiment_config,
)
from dml_study.training.history import History
from dml_study.training.optim import build_optimizer, build_param_groups, build_scheduler, group_lrs
from dml_study.training.run_dir import RunDirectory, best_key, best_record

#: Version of the feature cache layout (part of the cache key). 2: the training-split and
#: test-split features are separate files (``…-train.npz``, ``…-test.npz``), so a
#: validation run reads no test feature; their arrays are those of version 1's single file.
FEATURE_CACHE_VERSION = 2

#: The two files of a feature cache entry.
FEATURE_PARTS: tuple[str, ...] = ("train", "test")


class FrozenTierError(ValueError):
    """A frozen-tier run that cannot be built; the message names the cause and the fix."""


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FrozenFeatures:
    """Backbone features one run trains and evaluates on (float16 on disk, float32 in batches).

    ``split == "test"``: ``train_*`` are the training split (every class), ``test*`` the
    test split. ``split == "validation"`` (:func:`validation_features`): ``train_*`` are
    the training classes outside the validation fold, relabelled ``0..C'-1``
    (``class_names`` follow), and ``test``/``test_labels`` are the evaluation views of the
    held-out classes' training images; ``validation`` is their ``validation_classes.json``
    record. :func:`train_frozen` trains on ``train_*`` and evaluates on ``test*`` either way.
    """

    train_views: np.ndarray  # (V, N, F) augmented views of the training images
    train_eval: np.ndarray  # (N, F) evaluation view of the training images
    train_labels: np.ndarray  # (N,)
    test: np.ndarray  # (M, F) evaluation view of the evaluated images
    test_labels: np.ndarray  # (M,)
    class_names: tuple[str, ...]  # training class names (proxies)
    key: str
    split: str = "test"
    validation: dict[str, Any] | None = None
    #: (M,) index of each test row in the dataset's test split (a per-class subset keeps
    #: some images only); ``None`` in caches written before it was recorded.
    test_indices: np.ndarray | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.train_eval.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class TrainFeatures:
    """The training-split file of a feature cache entry (every class, its subset of images)."""

    views: np.ndarray  # (V, N, F)
    eval: np.ndarray  # (N, F)
    labels: np.ndarray  # (N,) labels of the whole training split
    class_names: tuple[str, ...]
    key: str


def feature_identity(config: ExperimentConfig, settings: FeatureSettings) -> dict[str, Any]:
    """Everything the cached features depend on (hashed into the cache file name)."""
    d, m = config.data, config.model
    return {
        "version": FEATURE_CACHE_VERSION, "dataset": d.dataset, "backbone": m.backbone,
        "pretrained": m.pretrained, "pretrained_path": m.pretrained_path,
        "image_size": d.image_size, "resize_ratio": d.resize_ratio,
        "crop_scale": list(d.crop_scale), "augment": d.augment,
        "timm_kwargs": dict(m.timm_kwargs), **settings.identity(),
    }


def feature_cache_path(
    config: ExperimentConfig, settings: FeatureSettings, cache_dir: str | Path | None = None,
    part: str = "train",
) -> Path:
    """``<cache>/frozen_features/<dataset>-<backbone>-<size>px-v<views>-<hash>-<part>.npz``.

    ``part`` is ``"train"`` (augmented and evaluation views of the training images, their
    labels and the class names) or ``"test"`` (evaluation views of the test images and
    their labels); both files of one entry share the stem before ``-<part>``.
    """
    from dml_study.paths import cache_root

    if part not in FEATURE_PARTS:
        raise ValueError(f"feature cache part must be one of {FEATURE_PARTS}, got {part!r}")
    identity = feature_identity(config, settings)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_root(cache_dir)
    name = (f"{config.data.dataset}-{config.model.backbone}-{config.data.image_size}px"
            f"-v{settings.views}-{digest}-{part}.npz")
    return root / "frozen_features" / name


def _entry_key(path: Path) -> str:
    """The cache entry's name shared by its two files (the stem without ``-<part>``)."""
    return path.stem.rsplit("-", 1)[0]


def check_subset_settings(config: ExperimentConfig, settings: FeatureSettings) -> None:
    """A frozen run's per-class subsets are the feature settings' (the study's
    ``frozen.features.<dataset>``); a config asking for other ones is refused."""
    for key in ("max_train_per_class", "max_test_per_class"):
        asked, cached = getattr(config.data, key), getattr(settings, key)
        if asked is not None and asked != cached:
            raise FrozenTierError(
                f"data.{key}={asked} but the frozen tier's features of "
                f"{config.data.dataset!r} use {key}={cached}: frozen runs take their subsets "
                f"from the study's frozen.features.{config.data.dataset} (set {key} there) "
                f"or leave data.{key} unset"
            )


def cached_test_indices(labels: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Indices of the test images whose features :func:`extract_features` caches (every
    image unless ``max_test_per_class``; the subset is seeded by ``feature_seed + 1``)."""
    return subset_per_class(labels, settings.max_test_per_class, settings.feature_seed + 1)


def extract_features(
    config: ExperimentConfig,
    settings: FeatureSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> FrozenFeatures:
    """The features a run of ``config`` trains and evaluates on, from the cache or computed.

    ``data.split: test``: the training and the test file (:func:`feature_cache_path`),
    each extracted if missing. ``data.split: validation``: only the training file (its
    extraction reads only training images), cut by :func:`validation_features`; the test
    file is neither read nor written.

    View ``v`` of training image ``i`` is the training transform drawn under the seed
    ``(feature_seed, v, 0, i, 0)`` of :func:`dml_study.training.pipeline.sample_seed`.
    Only self-retrieval datasets (train/test splits) are supported.
    """
    settings = settings or FeatureSettings()
    check_subset_settings(config, settings)
    d = config.data
    if d.split == "validation":
        train = load_train_features(config, settings, cache_dir, progress)
        return validation_features(
            train, d.val_folds, d.val_fold, d.val_seed,
            max_eval_per_class=settings.max_test_per_class,
            eval_subset_seed=settings.feature_seed + 1,
        )
    _extract_missing(config, settings, cache_dir, progress, FEATURE_PARTS)
    train = _load_train(feature_cache_path(config, settings, cache_dir, "train"))
    test_path = feature_cache_path(config, settings, cache_dir, "test")
    test, test_labels, test_indices = _load_test(test_path)
    return FrozenFeatures(
        train_views=train.views, train_eval=train.eval, train_labels=train.labels,
        test=test, test_labels=test_labels, class_names=train.class_names, key=train.key,
        test_indices=test_indices,
    )


def load_train_features(
    config: ExperimentConfig,
    settings: FeatureSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainFeatures:
    """The training-split file of ``config``'s features (extracted first if missing; only
    training images are read)."""
    settings = settings or FeatureSettings()
    _extract_missing(config, settings, cache_dir, progress, ("train",))
    return _load_train(feature_cache_path(config, settings, cache_dir, "train"))


def validation_features(
    train: TrainFeatures,
    folds: int,
    fold: int,
    seed: int,
    *,
    max_eval_per_class: int | None = None,
    eval_subset_seed: int = EVAL_SUBSET_SEED,
) -> FrozenFeatures:
    """A validation run's :class:`FrozenFeatures` from the training file alone.

    :func:`dml_study.data.splits.validation_view` (the fine-tuned tier's rule) cuts the
    training classes: the kept classes' views and evaluation views become ``train_*``
    (labels ``0..C'-1``, names in the same order), the held-out classes' evaluation views
    (at most ``max_eval_per_class`` each) become ``test``, labelled ``0..V-1``.
    """
    view = validation_view(train.labels, folds, fold, seed,
                           max_eval_per_class=max_eval_per_class,
                           eval_subset_seed=eval_subset_seed)
    kept = view.train_indices
    return FrozenFeatures(
        train_views=train.views[:, kept], train_eval=train.eval[kept],
        train_labels=view.train_labels(train.labels),
        test=train.eval[view.eval_indices], test_labels=view.eval_labels(train.labels),
        class_names=tuple(train.class_names[c] for c in view.train_classes),
        key=f"{train.key}-val{folds}.{fold}.{seed}", split="validation",
        validation=view.record(train.class_names),
    )


def _extract_missing(
    config: ExperimentConfig,
    settings: FeatureSettings,
    cache_dir: str | Path | None,
    progress: bool,
    parts: tuple[str, ...],
) -> None:
    """Compute and cache the files of ``parts`` that are not cached yet (one backbone)."""
    if settings.views < 1:
        raise FrozenTierError(f"frozen views must be >= 1, got {settings.views}")
    paths = {part: feature_cache_path(config, settings, cache_dir, part) for part in parts}
    missing = [part for part, path in paths.items() if not path.is_file()]
    if not missing:
        return
    determinism.apply()  # the features' bits must not depend on the machine
    from dml_study.data import build_dataloader, dataset_protocol, get_dataset
    from dml_study.data.transforms import model_transforms
    from dml_study.models import create_embedder
    from dml_study.training.pipeline import SeededAugmentation, _Transformed, dataset_kwargs

    if dataset_protocol(config.data.dataset) != "self":
        raise FrozenTierError(
            f"the frozen tier supports self-retrieval datasets (train/test); "
            f"{config.data.dataset!r} uses {dataset_protocol(config.data.dataset)!r}: "
            "run it in the fine-tuned tier"
        )
    d, m = config.data, config.model
    # Images are read once per view: the decoded-image cache would only cost memory.
    kw = dataset_kwargs(config, progress)
    # The test split is opened only if its file is missing (and refused under the guard).
    sets = {part: get_dataset(d.dataset, part, d.data_root, **kw) for part in missing}
    # Seeded, so that the two files of an entry come from one backbone even when they are
    # extracted in different processes (this matters only without pretrained weights).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.feature_seed)
        backbone = create_embedder(
            backbone=m.backbone, embedding_dim=None, pretrained=m.pretrained,
            pretrained_path=m.pretrained_path, freeze_backbone=True, **dict(m.timm_kwargs),
        ).eval()
    train_tf, eval_tf = model_transforms(config, backbone.data_config)
    batch = d.eval_batch_size

    def run(dataset: torch.utils.data.Dataset) -> np.ndarray:
        loader = build_dataloader(dataset, batch_size=batch, num_workers=d.num_workers)
        return embed(backbone, loader, "cpu", progress=progress)[0].astype(np.float16)

    seed = settings.feature_seed
    for part in missing:
        ds = sets[part]
        if part == "train":
            idx = subset_per_class(ds.labels, settings.max_train_per_class, seed)
            augmented = SeededAugmentation(ds, train_tf)
            features = {
                "train_views": np.stack([run(_ViewDataset(augmented, idx, view, seed))
                                         for view in range(settings.views)]),
                "train_eval": run(_Transformed(ds, idx, eval_tf)),
                "train_labels": np.asarray(ds.labels, dtype=np.int64)[idx],
                "class_names": np.asarray(list(ds.class_names)),
            }
        else:
            idx = cached_test_indices(np.asarray(ds.labels), settings)
            features = {
                "test": run(_Transformed(ds, idx, eval_tf)),
                "test_labels": np.asarray(ds.labels, dtype=np.int64)[idx],
                "test_indices": np.asarray(idx, dtype=np.int64),
            }
        path = paths[part]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda fh, arrays=features: np.savez(fh, **arrays))


class _ViewDataset(torch.utils.data.Dataset):
    """Augmented view ``view`` of every training image (seeded per image and view)."""

    def __init__(self, augmented: Any, indices: np.ndarray, view: int, seed: int):
        self.augmented, self.indices, self.view, self.seed = augmented, indices, view, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.augmented[(int(self.indices[i]), self.view, 0, 0, self.seed)]


def _load_train(path: Path) -> TrainFeatures:
    with np.load(path) as data:
        return TrainFeatures(
            views=data["train_views"], eval=data["train_eval"], labels=data["train_labels"],
            class_names=tuple(str(c) for c in data["class_names"]), key=_entry_key(path),
        )


def _load_test(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(test, test_labels, test_indices)`` of a test feature file (refused under the
    test-split guard); ``test_indices`` is ``None`` in files written before it was kept."""
    check_test_split_allowed(f"the frozen tier's test features {path}")
    with np.load(path) as data:
        indices = data["test_indices"] if "test_indices" in data.files else None
        return data["test"], data["test_labels"], indices


# --------------------------------------------------------------------------- training


def _head(feature_dim: int, embedding_dim: int | None) -> nn.Module:
    """Linear head initialised as :class:`dml_study.models.Embedder`'s (Proxy Anchor code)."""
    if embedding_dim is None or embedding_dim == feature_dim:
        return nn.Identity()
    head = nn.Linear(feature_dim, embedding_dim)
    nn.init.kaiming_normal_(head.weight, mode="fan_out")
    nn.init.zeros_(head.bias)
    return head


def _embed(head: nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head(torch.from_numpy(np.asarray(features, dtype=np.float32))).numpy()


def train_frozen(
    config: ExperimentConfig,
    features: FrozenFeatures,
    run_dir: RunDirectory,
    *,
    tier_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train head + proxies on cached features; write the run directory; return metrics.

    ``features`` come from :func:`extract_features` for ``config`` (its ``split`` must be
    ``config.data.split``): after every epoch the ``test``/``test_labels`` part is
    evaluated, i.e. the test split, or in a validation run the held-out classes. The
    best epoch is stored as ``metrics.json["best"]`` (by validation MAP@R) or
    ``["best_test_selected"]`` (by test R@1); ties go to the earliest epoch.

    ``on_epoch`` receives every epoch's history record (metrics included) as soon as it is
    evaluated; an exception it raises stops the run there, unfinished (the tuner's pruning,
    :mod:`dml_study.study.tune.trainers`).

    Raises :class:`~dml_study.training.errors.RunExistsError` for a finished run directory
    (unless ``run.overwrite``) and :class:`FrozenTierError` for a non-finite loss or
    features of another split than the config's.
    """
    from dml_study.training.pipeline import build_batch_sampler

    if features.split != config.data.split:
        raise FrozenTierError(
            f"run {run_dir.path.name} has data.split={config.data.split!r} but its features "
            f"{features.key} are for split {features.split!r}: build them with "
            "extract_features(config, settings) for this config"
        )
    started = time.perf_counter()
    determinism.apply()  # fixed threads and kernels, as the fine-tuned tier's Trainer
    run_dir.prepare(config.run.overwrite)
    seed = config.run.seed
    head, loss_fn, dim = init_frozen_run(config, features)
    groups = build_param_groups([], head.parameters(), loss_fn.param_groups(), config.optim)
    optimizer = build_optimizer(groups, config.optim)
    sampler = build_batch_sampler(config, features.train_labels, 0, 1)
    steps = len(sampler)
    scheduler = build_scheduler(optimizer, config.schedule, steps)
    ks = config.eval.ks or (1, 2, 4, 8)
    history = History()
    proxies_init = loss_fn.proxies.detach().numpy().copy()

    def evaluate_now(nmi: bool) -> dict[str, float]:
        emb = _embed(head, features.test)
        result = evaluate(emb, features.test_labels, ks=ks, nmi=nmi, seed=seed)
        return {k: float(v) for k, v in result.to_dict().items() if v is not None}

    def orth() -> dict[str, float]:
        stats = orthogonality_stats(loss_fn.proxies.detach())
        return {f"orth_{k}": float(v) for k, v in stats.items()}

    untrained = evaluate_now(nmi=False)
    history.append({"epoch": 0, "step": 0, **orth(), **untrained})
    views = features.train_views
    labels_t = torch.from_numpy(features.train_labels)
    step = 0
    for epoch in range(config.schedule.epochs):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        view_of = np.random.default_rng([seed, epoch, 7]).integers(len(views), size=views.shape[1])
        head.train()
        sums: dict[str, float] = {}
        for indices in sampler:
            idx = np.asarray(indices)
            batch = torch.from_numpy(views[view_of[idx], idx].astype(np.float32))
            loss = loss_fn(head(batch), labels_t[idx])
            if not math.isfinite(float(loss.detach())):
                raise FrozenTierError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} of run "
                    f"{run_dir.path.name}: lower optim.lr or the loss scale"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip_norm is not None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip_norm)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
            optimizer.step()
            scheduler.step()
            step += 1
            for key, value in loss_fn.last_terms.items():
                sums[key] = sums.get(key, 0.0) + value
        head.eval()
        last = epoch + 1 == config.schedule.epochs
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        record.update({k: v / steps for k, v in sums.items()})
        record.update(group_lrs(optimizer))
        record.update(orth())
        record.update(evaluate_now(nmi=last and config.eval.nmi))
        record["time_s"] = time.perf_counter() - epoch_start
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    return write_frozen_run(config, features, run_dir, head, loss_fn, dim, history,
                            untrained, proxies_init, started, tier_info=tier_info,
                            provenance=provenance)


def init_frozen_run(
    config: ExperimentConfig, features: FrozenFeatures
) -> tuple[nn.Module, ProxyLoss, int]:
    """The untrained head, the loss (with its initial proxies) and the embedding size of a run.

    The global RNGs are seeded with ``config.run.seed`` first, then the head and the loss are
    built in this order: the one initialisation of the sequential and the batched trainer
    (:mod:`dml_study.study.tiers.frozen_batched`), so a run starts from the same numbers in
    both.
    """
    from dml_study.training.engine import seed_everything

    seed_everything(config.run.seed)
    head = _head(features.feature_dim, config.model.embedding_dim)
    dim = features.feature_dim if isinstance(head, nn.Identity) else config.model.embedding_dim
    loss_fn = create_loss_from_config(config, features.num_classes, int(dim),
                                     features.class_names)
    return head, loss_fn, int(dim)


def write_frozen_run(
    config: ExperimentConfig,
    features: FrozenFeatures,
    run_dir: RunDirectory,
    head: nn.Module,
    loss_fn: ProxyLoss,
    dim: int,
    history: History,
    untrained: dict[str, float],
    proxies_init: np.ndarray,
    started: float,
    *,
    tier_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run directory of a trained run (``metrics.json`` last) and return its metrics.

    ``history`` holds the untrained record and one record per epoch; ``started`` is the
    :func:`time.perf_counter` value ``train_time_s`` is measured from. Shared by the
    sequential and the batched trainer, so both write the same files and keys.
    """
    final = _metrics_only(history.records[-1])
    best = best_record(history.records[1:], features.split)
    assert best is not None  # every epoch is evaluated
    train_recall = per_class_recall_at_1(_embed(head, features.train_eval), features.train_labels)
    proxies = loss_fn.proxies.detach().numpy()
    test_emb = _embed(head, features.test)
    metrics: dict[str, Any] = {
        **final,
        "untrained": _metrics_only(untrained),
        "split": features.split,
        best_key(features.split): {"epoch": best["epoch"],
                                   **{k: best[k] for k in final if k in best}},
        "train_time_s": time.perf_counter() - started,
        "tier": "frozen",
        "num_classes": features.num_classes,
        "embedding_dim": int(dim),
        **(tier_info or {}),
    }
    if hasattr(loss_fn, "average_margin"):
        metrics["mean_margin"] = loss_fn.average_margin()
    atomic_write_text(run_dir.config, config.to_yaml())
    atomic_write_json(run_dir.provenance, {**(provenance or {}), "tier": "frozen",
                                           "features": features.key})
    history.save(run_dir)
    atomic_write_with(run_dir.proxies_init, lambda fh: np.save(fh, proxies_init))
    atomic_write_with(run_dir.proxies, lambda fh: np.save(fh, proxies))
    atomic_write_with(run_dir.train_class_recall, lambda fh: np.save(fh, train_recall))
    if not isinstance(head, nn.Identity):  # what `python -m dml_study.export` exports
        from safetensors.torch import save as safetensors_bytes

        head_bytes = safetensors_bytes(head.state_dict())
        atomic_write_with(run_dir.head_weights, lambda fh: fh.write(head_bytes))
    if features.validation is not None:
        atomic_write_json(run_dir.validation_classes, features.validation)
    # ``indices``: which image of the test split each row is (the retrieval gallery's
    # thumbnails, :mod:`dml_study.study.analysis.retrieval`); validation runs have none.
    eval_arrays = {"embeddings": test_emb, "labels": features.test_labels}
    if features.test_indices is not None:
        eval_arrays["indices"] = np.asarray(features.test_indices, dtype=np.int64)
    atomic_write_with(run_dir.eval_embeddings(features.split),
                      lambda fh: np.savez(fh, **eval_arrays))
    atomic_write_json(run_dir.metrics, metrics)  # last: its presence marks the run finished
    return metrics


_METRIC_KEYS = frozenset({"MAP@R", "RP", "NMI"})


def _metrics_only(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k in _METRIC_KEYS or k.startswith("R@")}


# --------------------------------------------------------------------------- grid


def features_key(config: ExperimentConfig, settings: FeatureSettings) -> str:
    """Which :class:`FrozenFeatures` a run uses: the cache entry and, for a validation run,
    its fold (runs with equal keys can share one :func:`extract_features` result)."""
    key = _entry_key(feature_cache_path(config, settings))
    d = config.data
    if d.split == "validation":
        key += f"-val{d.val_folds}.{d.val_fold}.{d.val_seed}"
    return key


def train_frozen_runs(
    items: Iterable[tuple[str, ExperimentConfig, FeatureSettings]],
    results_dir: str | Path,
    *,
    stream: TextIO | None = None,
) -> list[tuple[str, float]]:
    """Train every ``(run_name, config, feature settings)`` not finished yet, in this process.

    Features are extracted (or loaded from the cache) once per dataset/backbone/settings.
    Returns ``(run_name, seconds)`` of the runs trained now.
    """
    from dml_study.env import environment_report

    cache: dict[str, FrozenFeatures] = {}
    provenance: dict[str, Any] | None = None
    done: list[tuple[str, float]] = []
    for run_name, config, settings in items:
        run_dir = RunDirectory.for_run(results_dir, run_name)
        if run_dir.metrics.is_file():
            continue
        key = features_key(config, settings)
        if key not in cache:
            began = time.perf_counter()
            cache.clear()  # one dataset's features in memory at a time
            cache[key] = extract_features(config, settings)
            _say(stream, f"frozen features {cache[key].key}: "
                         f"{time.perf_counter() - began:.0f} s")
        if provenance is None:
            provenance = environment_report()
        began = time.perf_counter()
        train_frozen(config, cache[key], run_dir, provenance=provenance,
                     tier_info={"features": settings.identity()})
        seconds = time.perf_counter() - began
        done.append((run_name, seconds))
        _say(stream, f"{run_name}: trained (frozen tier) in {seconds:.1f} s")
    return done


def _say(stream: TextIO | None, message: str) -> None:
    if stream is not None:
        print(message, file=stream, flush=True)


def frozen_run_config(config: StudyConfig, spec: RunSpec) -> Any:
    params = {k: v for k, v in spec.params.items() if k not in ("quiet", "num_workers")}
    return experiment_config({**params, "run_name": spec.run_name,
                              "results_dir": str(config.results_dir)})
