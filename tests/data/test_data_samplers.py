"""m-per-class and random batch samplers: coverage, determinism, DDP sharding, resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from dml_study.data import MPerClassBatchSampler, RandomBatchSampler


def _labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)  # classes interleaved in the index


UNEVEN = [1, 2, 3, 4, 5, 9, 17, 30, 7, 6, 4, 2]


def test_every_image_covered_and_batches_are_m_per_class() -> None:
    labels = _labels(UNEVEN)
    sampler = MPerClassBatchSampler(labels, m_per_class=4, batch_size=16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len(b) == 16 for b in batches)
    seen = set(itertools.chain.from_iterable(batches))
    assert seen == set(range(len(labels)))
    for batch in batches:
        per_class = Counter(labels[batch].tolist())
        # every class contributes a multiple of m images (chunks of 4 of one class)
        assert all(n % 4 == 0 for n in per_class.values())


def test_small_classes_are_filled_from_their_own_images() -> None:
    labels = _labels([1, 2, 8])
    sampler = MPerClassBatchSampler(labels, m_per_class=4, batch_size=4, seed=0)
    for batch in sampler:
        assert len(set(labels[batch].tolist())) == 1  # one chunk = one class
    singleton = int(np.flatnonzero(labels == 0)[0])
    chunks_of_0 = [b for b in sampler if labels[b[0]] == 0]
    assert chunks_of_0 == [[singleton] * 4]  # sampled with replacement


def test_deterministic_given_seed_and_epoch() -> None:
    labels = _labels(UNEVEN)
    a = MPerClassBatchSampler(labels, 2, 8, seed=11)
    b = MPerClassBatchSampler(labels, 2, 8, seed=11)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    c = MPerClassBatchSampler(labels, 2, 8, seed=12)
    assert list(c) != list(MPerClassBatchSampler(labels, 2, 8, seed=11))


def test_no_global_rng_use() -> None:
    labels = _labels(UNEVEN)
    np.random.seed(0)  # noqa: NPY002 - the test checks the legacy global RNG is untouched
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    list(MPerClassBatchSampler(labels, 2, 8, seed=1))
    list(RandomBatchSampler(50, 8, seed=1))
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_resume_by_skipping_batches() -> None:
    labels = _labels(UNEVEN)
    full = MPerClassBatchSampler(labels, 2, 8, seed=5)
    full.set_epoch(3)
    expected = list(full)[4:]
    resumed = MPerClassBatchSampler(labels, 2, 8, seed=5)
    resumed.set_epoch(3)
    assert list(itertools.islice(resumed, 4, None)) == expected


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_disjoint_equal_and_covering(world: int) -> None:
    labels = _labels(UNEVEN)
    samplers = [MPerClassBatchSampler(labels, 2, 6, seed=9, num_replicas=world, rank=r)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    assert all(len(batch) == 6 for batches in per_rank for batch in batches)
    covered = set()
    for step in range(len(per_rank[0])):
        shards = [set(per_rank[r][step]) for r in range(world)]
        covered |= set().union(*shards)
    assert covered == set(range(len(labels)))
    # Shards are slices of the single global order: positions never overlap.
    single = MPerClassBatchSampler(labels, 2, 6 * world, seed=9)
    single.set_epoch(2)
    for step, global_batch in enumerate(single):
        joined = [i for r in range(world) for i in per_rank[r][step]]
        assert joined == global_batch


def test_ranks_disjoint_without_padding() -> None:
    labels = _labels([4] * 12)  # 24 chunks of 2 = 4 global batches of 6 chunks, no padding
    a, b = (list(MPerClassBatchSampler(labels, 2, 6, seed=1, num_replicas=2, rank=r))
            for r in (0, 1))
    assert not set(itertools.chain(*a)) & set(itertools.chain(*b))


def test_m_per_class_validation() -> None:
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        MPerClassBatchSampler([0, 1], m_per_class=3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="rank must be in"):
        MPerClassBatchSampler([0, 1], 1, 2, seed=0, num_replicas=2, rank=2)


def test_random_batch_sampler() -> None:
    s = RandomBatchSampler(23, batch_size=5, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 4 and all(len(b) == 5 for b in batches)
    assert len(set(itertools.chain(*batches))) == 20  # a permutation: no repeats
    full = RandomBatchSampler(23, batch_size=5, seed=0, drop_last=False)
    assert set(itertools.chain(*full)) == set(range(23))
    ranks = [list(RandomBatchSampler(23, 5, seed=0, num_replicas=2, rank=r, drop_last=False))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert set(itertools.chain(*ranks[0], *ranks[1])) == set(range(23))
    r0 = RandomBatchSampler(40, 5, seed=0, num_replicas=2, rank=0)
    r1 = RandomBatchSampler(40, 5, seed=0, num_replicas=2, rank=1)
    assert not set(itertools.chain(*r0)) & set(itertools.chain(*r1))
    r0.set_epoch(1)
    assert list(r0) != list(RandomBatchSampler(40, 5, seed=0, num_replicas=2, rank=0))
