"""Data pipeline of the trainer: datasets, seeded augmentation, resumable batch streams.

Augmentation randomness is tied to the *sample*, not to the process that loads it: every
training sample is drawn under ``torch.manual_seed(hash(seed, epoch, batch, index, k))``
(``k`` counts repeats of an index within a batch) inside :func:`torch.random.fork_rng`, so

* the crops/flips of a run do not depend on ``num_workers`` or the worker a sample lands on,
* resuming mid-epoch reproduces exactly the augmentations of the uninterrupted run,
* the main process's RNG (dropout, drop-path) is untouched by data loading.

The batch stream is an :class:`EpochBatches` wrapper around the data layer's seeded batch
sampler: ``set_position(epoch, start)`` selects the epoch's order (which depends only on
``(seed, epoch)``) and skips the batches already trained — without loading them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from dml_study.config import ExperimentConfig
from dml_study.data import (
    DMLDataset,
    MPerClassBatchSampler,
    RandomBatchSampler,
    build_dataloader,
    dataset_protocol,
    default_recall_ks,
    get_dataset,
)
from dml_study.data.splits import (
    EVAL_SUBSET_SEED,
    TRAIN_SUBSET_SEED,
    subset_per_class,
    validation_view,
)
from dml_study.data.verify import screen_datasets

SampleKey = tuple[int, int, int, int, int]  # (index, epoch, batch, repeat, seed)


def sample_seed(seed: int, epoch: int, batch: int, index: int, repeat: int) -> int:
    """A 63-bit seed for one training sample, independent of worker layout."""
    state = np.random.SeedSequence([seed, epoch, batch, index, repeat]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


class SeededAugmentation(torch.utils.data.Dataset):
    """Training view of a :class:`DMLDataset`: ``transform`` applied under a per-sample seed.

    Indexed by :data:`SampleKey` tuples produced by :class:`EpochBatches`.
    """

    def __init__(self, dataset: DMLDataset, transform: Callable[[Any], torch.Tensor]):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, epoch, batch, repeat, seed = key
        image = self.dataset.load_image(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(seed, epoch, batch, index, repeat))
            tensor = self.transform(image)
        return tensor, int(self.dataset.labels[index])


class EpochBatches(torch.utils.data.Sampler[list[SampleKey]]):
    """Resumable stream of one epoch's batches, as :data:`SampleKey` lists."""

    def __init__(self, base: MPerClassBatchSampler | RandomBatchSampler, seed: int):
        self.base = base
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from batch ``start`` (batches before it are skipped)."""
        self.epoch, self.start = int(epoch), int(start)
        self.base.set_epoch(self.epoch)

    def batches_per_epoch(self) -> int:
        return len(self.base)

    def __len__(self) -> int:
        return len(self.base) - self.start

    def __iter__(self) -> Iterator[list[SampleKey]]:
        batches = itertools.islice(iter(self.base), self.start, None)
        for b, indices in enumerate(batches, start=self.start):
            repeats: Counter[int] = Counter()
            keys = []
            for i in indices:
                keys.append((int(i), self.epoch, b, repeats[i], self.seed))
                repeats[i] += 1
            yield keys


@dataclass
class EvalSets:
    """Evaluation splits: ``query`` (and ``gallery`` for query/gallery protocols).

    ``split`` is the run's ``data.split``: ``"test"`` (the test split, or In-Shop's query
    and gallery) or ``"validation"`` (``query`` holds the training images of the held-out
    classes; ``validation`` is then the ``validation_classes.json`` record of
    :meth:`dml_study.data.splits.ValidationView.record`).
    """

    query: DMLDataset
    gallery: DMLDataset | None
    ks: tuple[int, ...]
    split: str = "test"
    validation: dict[str, Any] | None = None

    @property
    def splits(self) -> dict[str, DMLDataset]:
        out = {"query": self.query}
        if self.gallery is not None:
            out["gallery"] = self.gallery
        return out


def load_datasets(
    config: ExperimentConfig, progress: bool = True
) -> tuple[DMLDataset, EvalSets]:
    """Training split and evaluation splits of ``config.data.dataset`` (no transforms yet).

    ``data.split: test``: the training split, and the test split (or query and gallery).
    ``data.split: validation``: only the training split is opened (the test split is not
    even listed); its images are cut by :func:`dml_study.data.splits.validation_view` into
    the classes outside fold ``data.val_fold`` (the training set, labels re-indexed
    ``0..C'-1`` in sorted class order, class names following) and the held-out classes'
    images (the evaluation set, split ``"validation"``, self-retrieval). The per-class
    subsets ``data.max_train_per_class`` (before the validation cut) and
    ``data.max_test_per_class`` (of the evaluation images) are seeded by
    :data:`~dml_study.data.splits.TRAIN_SUBSET_SEED` / ``EVAL_SUBSET_SEED``. Every DDP rank
    computes the same split from the same config.

    Missing data raises the data layer's error (naming the expected layout) right here,
    before any model is built or run directory created. Then, unless
    ``data.check_images: false``, every image of every split is screened once
    (:func:`dml_study.data.verify.screen_datasets`; files unchanged since an earlier
    screening are not decoded again): with ``data.on_corrupt: raise`` one
    :class:`~dml_study.data.screening.CorruptImagesError` names every unreadable file and the
    ``--on_corrupt skip`` fix; with ``skip`` the splits are loaded again without them (each
    dropped with a warning; the records answer, nothing is decoded twice).
    """
    d = config.data
    kw = dataset_kwargs(config, progress, check_images=False)  # screened below, once
    # Cache at the eval resize size: the random crop and the centre crop both start there.
    cache_size = round(d.image_size * d.resize_ratio)
    subsets = (d.split == "validation" or d.max_train_per_class is not None
               or d.max_test_per_class is not None)
    if d.cache_decoded and not subsets:
        kw["cache_decoded"] = True
        kw["cache_size"] = cache_size
    ks = tuple(config.eval.ks if config.eval.ks is not None else default_recall_ks(d.dataset))
    splits = _load_splits(config, kw)
    if d.check_images is not False:
        report = screen_datasets(d.dataset, splits, progress=progress, data_root=d.data_root)
        if not report.ok:
            if d.on_corrupt == "raise":
                raise report.error()
            splits = _load_splits(config, {**kw, "check_images": True})
    train = splits["train"]
    if not subsets:
        return train, EvalSets(splits["query"], splits.get("gallery"), ks)
    # Subsets first, decoding after: only the images a run uses are decoded.
    keep = subset_per_class(train.labels, d.max_train_per_class, TRAIN_SUBSET_SEED)
    everything = np.arange(train.num_classes)
    if d.split == "validation":
        view = validation_view(
            train.labels[keep], d.val_folds, d.val_fold, d.val_seed,
            max_eval_per_class=d.max_test_per_class,
        )
        full = train
        train = full.subset(keep[view.train_indices], view.train_classes)
        query = full.subset(keep[view.eval_indices], view.validation_classes,
                            split="validation")
        sets = EvalSets(query, None, ks, "validation", view.record(full.class_names))
    else:
        train = train.subset(keep, everything) if d.max_train_per_class is not None else train
        sets = EvalSets(splits["query"], splits.get("gallery"), ks)
        if d.max_test_per_class is not None:
            q = sets.query
            rows = subset_per_class(q.labels, d.max_test_per_class, EVAL_SUBSET_SEED)
            sets.query = q.subset(rows, np.arange(q.num_classes))
    if d.cache_decoded:
        for ds in (train, *sets.splits.values()):
            ds.enable_decoded_cache(size=cache_size, progress=progress)
    return train, sets


def dataset_kwargs(
    config: ExperimentConfig, progress: bool = True, check_images: bool | None = None
) -> dict[str, Any]:
    """Keyword arguments of :func:`~dml_study.data.get_dataset` for ``config`` (no cache).

    ``check_images`` overrides ``data.check_images`` (the trainer screens once itself).
    """
    kw: dict[str, Any] = {"progress": progress, "on_corrupt": config.data.on_corrupt}
    value = config.data.check_images if check_images is None else check_images
    if value is not None:
        kw["check_images"] = value
    return kw


def _load_splits(config: ExperimentConfig, kw: dict[str, Any]) -> dict[str, DMLDataset]:
    """``{"train"[, "query"[, "gallery"]]}`` of the config's dataset; with ``data.split:
    validation`` only the training split (the test split is never opened: under the
    test-split guard opening it is refused)."""
    d = config.data
    out = {"train": get_dataset(d.dataset, "train", d.data_root, **kw)}
    if d.split == "validation":
        return out
    if dataset_protocol(d.dataset) == "query_gallery":
        out["query"] = get_dataset(d.dataset, "query", d.data_root, **kw)
        out["gallery"] = get_dataset(d.dataset, "gallery", d.data_root, **kw)
    else:
        out["query"] = get_dataset(d.dataset, "test", d.data_root, **kw)
    return out


def embedder_arguments(config: ExperimentConfig) -> dict[str, Any]:
    """The :func:`dml_study.models.create_embedder` arguments of the trainer's model.

    The one place that maps ``model.*`` / ``data.image_size`` to the embedder, so the
    exporter (:mod:`dml_study.export`) rebuilds exactly the network a run trained.
    """
    m, d = config.model, config.data
    return {
        "backbone": m.backbone,
        "embedding_dim": m.embedding_dim,
        "pretrained": m.pretrained,
        "pretrained_path": m.pretrained_path,
        "l2_normalize": m.l2_normalize,
        "img_size": d.image_size if m.set_img_size else None,
        "patch_size": m.patch_size,
        "input_size": d.image_size,  # a ViT follows data.image_size (issue #15)
        "freeze_patch_embed": m.freeze_patch_embed,
        "freeze_bn": m.freeze_bn,
        **dict(m.timm_kwargs),
    }


def build_batch_sampler(
    config: ExperimentConfig, labels: np.ndarray, rank: int, world_size: int
) -> MPerClassBatchSampler | RandomBatchSampler:
    """The seeded, DDP-sharded batch sampler (m-per-class, or random when m_per_class=0)."""
    d = config.data
    if d.m_per_class > 0:
        return MPerClassBatchSampler(
            labels, d.m_per_class, d.batch_size, seed=config.run.seed,
            num_replicas=world_size, rank=rank, drop_last=True,
        )
    return RandomBatchSampler(
        len(labels), d.batch_size, seed=config.run.seed, num_replicas=world_size, rank=rank,
        drop_last=True,
    )


def shard_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """Indices of an evaluation set embedded by ``rank`` (strided, no padding)."""
    return np.arange(rank, n, world_size, dtype=np.int64)


class _Transformed(torch.utils.data.Dataset):
    """Subset of a :class:`DMLDataset` with a deterministic (eval) transform."""

    def __init__(self, dataset: DMLDataset, indices: np.ndarray, transform: Callable):
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return self.transform(self.dataset.load_image(j)), int(self.dataset.labels[j])


def eval_loader(
    dataset: DMLDataset, transform: Callable, config: ExperimentConfig, rank: int, world: int
) -> tuple[torch.utils.data.DataLoader, np.ndarray]:
    """Loader over this rank's shard of ``dataset`` and the shard's indices."""
    indices = shard_indices(len(dataset), rank, world)
    loader = build_dataloader(
        _Transformed(dataset, indices, transform),
        batch_size=config.data.eval_batch_size,
        num_workers=config.data.num_workers,
    )
    return loader, indices
