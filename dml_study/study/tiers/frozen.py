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
   ``$DML_STUDY_CACHE/frozen_features/`` keyed by dataset, backbone, size and views.
2. :func:`train_frozen` trains ``head + proxies`` for ``schedule.epochs`` epochs of
   m-per-class batches; each sample of an epoch uses one of its cached views (drawn from
   ``(seed, epoch)``). After every epoch it evaluates the test split and logs loss terms,
   learning rates, proxy orthogonality statistics and metrics, then writes a normal run
   directory (``config.yaml``, ``history.json/csv``, ``metrics.json`` with ``"tier":
   "frozen"``, ``proxies*.npy``, ``test_embeddings.npz`` with each row's test-split image
   index) plus ``train_class_recall.npy``
   (R@1 of every training class on the evaluation view of the training images, for the
   SO paper's motivation analysis) and ``head.safetensors`` (the trained head, which
   ``python -m dml_study.export`` joins to the pretrained backbone), so
   :mod:`~dml_study.study.analysis.collect` reads both tiers.

The features are those of the pretrained backbone (BatchNorm in eval mode), i.e. the model
the fine-tuned tier starts from, so the tier answers "what do SO / adaptive margins do to a
head and proxies on fixed features"; backbone adaptation is the fine-tuned tier's question.
Runs are deterministic on CPU: same seed, same numbers.
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

from dml_study.atomic_io import atomic_write_json, atomic_write_text, atomic_write_with
from dml_study.config import ExperimentConfig
from dml_study.evaluation import embed, evaluate
from dml_study.evaluation.per_class import per_class_recall_at_1
from dml_study.losses import create_loss_from_config, orthogonality_stats
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import (
    FeatureSettings,
    RunOutcome,
    RunSpec,
    experiment_config,
    frozen_feature_settings,
    is_finished,
    unique_runs,
)
from dml_study.training.history import History
from dml_study.training.optim import build_optimizer, build_param_groups, build_scheduler, group_lrs
from dml_study.training.run_dir import RunDirectory

#: Version of the feature cache layout (part of the cache key).
FEATURE_CACHE_VERSION = 1

class FrozenTierError(ValueError):
    """A frozen-tier run that cannot be built; the message names the cause and the fix."""


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FrozenFeatures:
    """Cached backbone features of one dataset (float16 on disk, float32 in batches)."""

    train_views: np.ndarray  # (V, N, F) augmented views of the training images
    train_eval: np.ndarray  # (N, F) evaluation view of the training images
    train_labels: np.ndarray  # (N,)
    test: np.ndarray  # (M, F) evaluation view of the test images
    test_labels: np.ndarray  # (M,)
    class_names: tuple[str, ...]  # training class names (proxies)
    key: str
    #: (M,) index of each test row in the dataset's test split (a per-class subset keeps
    #: some images only); ``None`` in caches written before it was recorded.
    test_indices: np.ndarray | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.train_eval.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
    config: ExperimentConfig, settings: FeatureSettings, cache_dir: str | Path | None = None
) -> Path:
    """``<cache>/frozen_features/<dataset>-<backbone>-<size>px-v<views>-<hash>.npz``."""
    from dml_study.paths import cache_root

    identity = feature_identity(config, settings)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_root(cache_dir)
    name = (f"{config.data.dataset}-{config.model.backbone}-{config.data.image_size}px"
            f"-v{settings.views}-{digest}.npz")
    return root / "frozen_features" / name


def per_class_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``limit`` images of every class (seeded choice)."""
    labels = np.asarray(labels)
    if limit is None:
        return np.arange(len(labels))
    if limit < 2:
        raise FrozenTierError(f"max_*_per_class must be >= 2 (retrieval needs pairs), got {limit}")
    rng = np.random.default_rng([seed, limit])
    keep = [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def cached_test_indices(labels: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Indices of the test images whose features :func:`extract_features` caches (every
    image unless ``max_test_per_class``; the subset is seeded by ``feature_seed + 1``)."""
    return per_class_subset(labels, settings.max_test_per_class, settings.feature_seed + 1)


def extract_features(
    config: ExperimentConfig,
    settings: FeatureSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> FrozenFeatures:
    """Backbone features of ``config``'s dataset, from the cache or computed and cached.

    View ``v`` of training image ``i`` is the training transform drawn under the seed
    ``(feature_seed, v, 0, i, 0)`` of :func:`dml_study.training.pipeline.sample_seed`.
    Only self-retrieval datasets (train/test splits) are supported.
    """
    settings = settings or FeatureSettings()
    if settings.views < 1:
        raise FrozenTierError(f"frozen views must be >= 1, got {settings.views}")
    path = feature_cache_path(config, settings, cache_dir)
    if path.is_file():
        return _load_features(path)
    from dml_study.config import replace
    from dml_study.data import build_dataloader, dataset_protocol
    from dml_study.data.transforms import model_transforms
    from dml_study.models import create_embedder
    from dml_study.training.pipeline import (
        SeededAugmentation,
        _Transformed,
        load_datasets,
    )

    if dataset_protocol(config.data.dataset) != "self":
        raise FrozenTierError(
            f"the frozen tier supports self-retrieval datasets (train/test); "
            f"{config.data.dataset!r} uses {dataset_protocol(config.data.dataset)!r}: "
            "run it in the fine-tuned tier"
        )
    # Images are read once per view: the decoded-image cache would only cost memory.
    train_set, eval_sets = load_datasets(replace(config, cache_decoded=False), progress=progress)
    m = config.model
    backbone = create_embedder(
        backbone=m.backbone, embedding_dim=None, pretrained=m.pretrained,
        pretrained_path=m.pretrained_path, freeze_backbone=True, **dict(m.timm_kwargs),
    ).eval()
    train_tf, eval_tf = model_transforms(config, backbone.data_config)
    batch = config.data.eval_batch_size

    def run(dataset: torch.utils.data.Dataset) -> np.ndarray:
        loader = build_dataloader(dataset, batch_size=batch, num_workers=config.data.num_workers)
        return embed(backbone, loader, "cpu", progress=progress)[0].astype(np.float16)

    seed = settings.feature_seed
    train_idx = per_class_subset(train_set.labels, settings.max_train_per_class, seed)
    test_set = eval_sets.query
    test_idx = cached_test_indices(test_set.labels, settings)
    augmented = SeededAugmentation(train_set, train_tf)
    features = {
        "train_views": np.stack([run(_ViewDataset(augmented, train_idx, view, seed))
                                 for view in range(settings.views)]),
        "train_eval": run(_Transformed(train_set, train_idx, eval_tf)),
        "train_labels": np.asarray(train_set.labels, dtype=np.int64)[train_idx],
        "test": run(_Transformed(test_set, test_idx, eval_tf)),
        "test_labels": np.asarray(test_set.labels, dtype=np.int64)[test_idx],
        "test_indices": np.asarray(test_idx, dtype=np.int64),
        "class_names": np.asarray(list(train_set.class_names)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda fh: np.savez(fh, **features))
    return _load_features(path)


class _ViewDataset(torch.utils.data.Dataset):
    """Augmented view ``view`` of every training image (seeded per image and view)."""

    def __init__(self, augmented: Any, indices: np.ndarray, view: int, seed: int):
        self.augmented, self.indices, self.view, self.seed = augmented, indices, view, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.augmented[(int(self.indices[i]), self.view, 0, 0, self.seed)]


def _load_features(path: Path) -> FrozenFeatures:
    with np.load(path) as data:
        return FrozenFeatures(
            train_views=data["train_views"], train_eval=data["train_eval"],
            train_labels=data["train_labels"], test=data["test"],
            test_labels=data["test_labels"],
            class_names=tuple(str(c) for c in data["class_names"]), key=path.stem,
            test_indices=data["test_indices"] if "test_indices" in data.files else None,
        )


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

    ``on_epoch`` receives every epoch's history record (metrics included) as soon as it is
    evaluated; an exception it raises stops the run there, unfinished (the tuner's pruning,
    :mod:`dml_study.study.tune.trainers`).
    Raises :class:`~dml_study.training.errors.RunExistsError` for a finished run directory
    (unless ``run.overwrite``) and :class:`FrozenTierError` for a non-finite loss.
    """
    from dml_study.training.engine import seed_everything
    from dml_study.training.pipeline import build_batch_sampler

    started = time.perf_counter()
    run_dir.prepare(config.run.overwrite)
    seed = config.run.seed
    seed_everything(seed)
    head = _head(features.feature_dim, config.model.embedding_dim)
    dim = features.feature_dim if isinstance(head, nn.Identity) else config.model.embedding_dim
    loss_fn = create_loss_from_config(config, features.num_classes, int(dim),
                                     features.class_names)
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

    final = _metrics_only(history.records[-1])
    best = max(history.records[1:], key=lambda r: r["R@1"])
    train_recall = per_class_recall_at_1(_embed(head, features.train_eval), features.train_labels)
    proxies = loss_fn.proxies.detach().numpy()
    test_emb = _embed(head, features.test)
    metrics: dict[str, Any] = {
        **final,
        "untrained": _metrics_only(untrained),
        "best": {"epoch": best["epoch"], **{k: best[k] for k in final if k in best}},
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
    # ``indices``: which image of the test split each row is (the retrieval gallery's
    # thumbnails, :mod:`dml_study.study.analysis.retrieval`).
    test_arrays = {"embeddings": test_emb, "labels": features.test_labels}
    if features.test_indices is not None:
        test_arrays["indices"] = np.asarray(features.test_indices, dtype=np.int64)
    atomic_write_with(run_dir.test_embeddings, lambda fh: np.savez(fh, **test_arrays))
    atomic_write_json(run_dir.metrics, metrics)  # last: its presence marks the run finished
    return metrics


_METRIC_KEYS = frozenset({"MAP@R", "RP", "NMI"})


def _metrics_only(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k in _METRIC_KEYS or k.startswith("R@")}


# --------------------------------------------------------------------------- grid


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
        key = str(feature_cache_path(config, settings))
        if key not in cache:
            began = time.perf_counter()
            cache.clear()  # one dataset's features in memory at a time
            cache[key] = extract_features(config, settings)
            _say(stream, f"frozen features {Path(key).name}: {time.perf_counter() - began:.0f} s")
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


def run_frozen_tier(
    config: StudyConfig, specs: Iterable[RunSpec], *, stream: TextIO | None = None
) -> list[RunOutcome]:
    """Train the frozen-tier runs of ``specs`` in this process (no notebook per run).

    Finished runs are reused; features are extracted once per dataset and backbone.
    """
    specs = unique_runs(specs)
    if not specs:
        return []
    todo = [s for s in specs if not is_finished(config.results_dir, s.run_name)]
    if stream is not None:
        print(f"frozen tier: {len(specs)} runs, {len(specs) - len(todo)} already finished, "
              f"{len(todo)} to train", file=stream, flush=True)
    items = [(s.run_name, _frozen_run_config(config, s),
              frozen_feature_settings(config, s.dataset)) for s in todo]
    trained = dict(train_frozen_runs(items, config.results_dir, stream=stream))
    return [RunOutcome(s.run_name, "trained" if s.run_name in trained else "reused",
                       trained.get(s.run_name, 0.0), None) for s in specs]


def _frozen_run_config(config: StudyConfig, spec: RunSpec) -> Any:
    params = {k: v for k, v in spec.params.items() if k not in ("quiet", "num_workers")}
    return experiment_config({**params, "run_name": spec.run_name,
                              "results_dir": str(config.results_dir)})
