"""Seeded batch samplers for metric learning: m-per-class batches and plain random batches.

Both are *batch samplers* (they yield lists of dataset indices) and are DDP-aware: every
rank builds the same global order from ``(seed, epoch)`` with its own
``numpy.random.Generator`` (never the global RNG) and takes a disjoint shard of each global
batch, so all ranks see the same number of batches. Because the order depends only on
``(seed, epoch)``, a run resumed mid-epoch calls ``set_epoch(e)`` and skips the first ``k``
batches with ``itertools.islice`` to continue exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.utils.data


def _check_replicas(num_replicas: int, rank: int) -> None:
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    # A SeedSequence over (seed, epoch) gives independent streams per epoch.
    return np.random.default_rng([int(seed), int(epoch)])


class _SeededBatchSampler(torch.utils.data.Sampler[list[int]]):
    """What both batch samplers share: the seed, this rank's shard, the epoch, the length."""

    def __init__(
        self, batch_size: int, seed: int, num_replicas: int, rank: int, drop_last: bool
    ) -> None:
        _check_replicas(num_replicas, rank)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._num_batches = 0  # set by the subclass

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._num_batches


class MPerClassBatchSampler(_SeededBatchSampler):
    """Batches of ``batch_size // m_per_class`` classes with ``m_per_class`` images each.

    One epoch:

    1. every class's indices are shuffled and cut into chunks of ``m`` images. The last
       chunk of a class is topped up with other images of the same class drawn at random
       (with replacement when the class has fewer than ``m`` images in total), so every
       image appears in at least one chunk: **each epoch covers every image at least once**;
    2. chunks are spread over the epoch in stratified order (chunk ``j`` of a class with
       ``n_c`` chunks gets the sort key ``(j + u) / n_c``, ``u ~ U[0, 1)``), so large classes
       do not cluster at the end and the classes of one batch are distinct except for rare
       collisions of large classes;
    3. consecutive groups of ``(batch_size // m) * num_replicas`` chunks form the global
       batches; rank ``r`` takes the ``r``-th ``batch_size // m`` chunks of each. The tail is
       padded with extra random chunks so every rank gets the same number of full batches
       (``drop_last=False`` with a single replica instead yields a shorter last batch).

    Args:
        labels: integer class label per dataset index.
        m_per_class: images per class in a batch.
        batch_size: images per batch *per rank*; must be a multiple of ``m_per_class``.
        seed: base seed; the order of an epoch depends only on ``(seed, epoch)``.
        num_replicas, rank: DDP world size and this process's rank.
        drop_last: see step 3.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        m_per_class: int,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D sequence of class ids")
        if m_per_class < 1:
            raise ValueError(f"m_per_class must be >= 1, got {m_per_class}")
        if batch_size < m_per_class or batch_size % m_per_class:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"m_per_class ({m_per_class})"
            )
        super().__init__(batch_size, seed, num_replicas, rank, drop_last)
        self.m = int(m_per_class)
        classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        self._class_indices: list[np.ndarray] = np.split(order, bounds)
        self._chunks_per_class = np.array(
            [math.ceil(len(ix) / self.m) for ix in self._class_indices], dtype=np.int64
        )
        self._chunks_per_batch = self.batch_size // self.m
        self._chunks_per_global = self._chunks_per_batch * self.num_replicas
        total = int(self._chunks_per_class.sum())
        self._num_batches = math.ceil(total / self._chunks_per_global)
        self._pad_tail = self.drop_last or self.num_replicas > 1

    def _chunk(self, rng: np.random.Generator, indices: np.ndarray) -> list[np.ndarray]:
        shuffled = rng.permutation(indices)
        chunks = [shuffled[i : i + self.m] for i in range(0, len(shuffled), self.m)]
        short = self.m - len(chunks[-1])
        if short:
            # Top up from the class's other images; only small classes need replacement.
            pool = np.setdiff1d(indices, chunks[-1])
            replace = len(pool) < short
            if len(pool) == 0:
                pool = indices
            fill = rng.choice(pool, size=short, replace=replace)
            chunks[-1] = np.concatenate([chunks[-1], fill])
        return chunks

    def _global_chunks(self) -> list[np.ndarray]:
        rng = _epoch_rng(self.seed, self.epoch)
        chunks: list[np.ndarray] = []
        keys: list[float] = []
        for indices in self._class_indices:
            class_chunks = self._chunk(rng, indices)
            n = len(class_chunks)
            offsets = rng.random(n)
            keys.extend((np.arange(n) + offsets) / n)
            chunks.extend(class_chunks)
        order = np.argsort(np.asarray(keys), kind="stable")
        ordered = [chunks[i] for i in order]
        missing = self._num_batches * self._chunks_per_global - len(ordered)
        if missing and self._pad_tail:
            for _ in range(missing):
                c = int(rng.integers(len(self._class_indices)))
                ordered.append(self._chunk(rng, self._class_indices[c])[0])
        return ordered

    def __iter__(self) -> Iterator[list[int]]:
        chunks = self._global_chunks()
        per_batch, per_global = self._chunks_per_batch, self._chunks_per_global
        for b in range(self._num_batches):
            start = b * per_global + self.rank * per_batch
            mine = chunks[start : start + per_batch]
            if not mine:
                continue
            yield np.concatenate(mine).astype(np.int64).tolist()


class RandomBatchSampler(_SeededBatchSampler):
    """Plain shuffled batches with the same seeding/sharding contract as the m-per-class one.

    Each epoch is a permutation drawn from ``(seed, epoch)``. ``drop_last=True`` drops the
    incomplete tail global batch; ``drop_last=False`` pads the permutation with its own head
    (like ``DistributedSampler``) so every image is seen and all ranks get equal batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(batch_size, seed, num_replicas, rank, drop_last)
        self.n = int(n)
        per_global = self.batch_size * self.num_replicas
        if self.drop_last:
            self._num_batches = self.n // per_global
            if self._num_batches == 0:
                raise ValueError(
                    f"drop_last=True with {n} images leaves no batch of "
                    f"{batch_size} x {num_replicas} replicas; use drop_last=False"
                )
        else:
            self._num_batches = math.ceil(self.n / per_global)

    def __iter__(self) -> Iterator[list[int]]:
        perm = _epoch_rng(self.seed, self.epoch).permutation(self.n)
        per_global = self.batch_size * self.num_replicas
        needed = self._num_batches * per_global
        if needed > self.n:
            perm = np.resize(perm, needed)  # repeats the head, like DistributedSampler
        for b in range(self._num_batches):
            start = b * per_global + self.rank * self.batch_size
            yield perm[start : start + self.batch_size].astype(np.int64).tolist()
