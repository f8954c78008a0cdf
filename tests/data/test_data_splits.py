"""Class-disjoint validation folds, per-class subsets and the test-split guard
(:mod:`dml_study.data.splits`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest

from dml_study.data import get_dataset
from dml_study.data.cache import DecodedImageCache
from dml_study.data.splits import (
    FORBID_TEST_ENV,
    SplitError,
    TestSplitForbiddenError,
    forbid_test_split,
    is_test_split_forbidden,
    subset_per_class,
    validation_split,
    validation_view,
)
from dml_study.errors import EXIT_USAGE, UserFacingError

# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize("num_classes", [8, 20, 37, 100, 1200])
def test_the_folds_of_one_seed_partition_the_classes(num_classes):
    classes = np.arange(num_classes) * 3 + 5  # any sortable ids, not 0..C-1
    folds = [validation_split(classes, 4, f, seed=7) for f in range(4)]
    held_out = [set(val.tolist()) for _, val in folds]
    for a, b in combinations(held_out, 2):
        assert not a & b  # the folds are disjoint from each other ...
    assert set().union(*held_out) == set(classes.tolist())  # ... and cover every class
    sizes = [len(v) for v in held_out]
    assert max(sizes) - min(sizes) <= 1  # near-equal
    for train, val in folds:
        assert not set(train.tolist()) & set(val.tolist())  # class-disjoint
        assert sorted([*train.tolist(), *val.tolist()]) == sorted(classes.tolist())
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted arrays


def test_default_holds_out_a_quarter_of_the_classes():
    train, val = validation_split(np.arange(100))
    assert len(val) == 25 and len(train) == 75
    # CUB's 100 training classes, glyphs' 1,200: 25 % each
    assert len(validation_split(np.arange(1200))[1]) == 300


def test_folds_are_deterministic_from_the_seed_and_labels_equal_class_ids():
    labels = np.repeat(np.arange(40), 5)
    a = validation_split(labels, 4, 1, seed=3)
    b = validation_split(np.unique(labels), 4, 1, seed=3)  # per-image labels or the ids
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1], validation_split(labels, 4, 1, seed=3)[1])
    assert not np.array_equal(a[1], validation_split(labels, 4, 1, seed=4)[1])
    # shuffled, not a contiguous block of the sorted class order (MLRC's default)
    assert not np.array_equal(a[1], np.arange(a[1][0], a[1][0] + len(a[1])))


def test_another_process_cuts_the_same_folds():
    # What two DDP ranks do: the same call in another interpreter (another hash seed).
    code = ("import json, numpy as np; from dml_study.data.splits import validation_split; "
            "print(json.dumps([validation_split(np.arange(200), 4, f, 11)[1].tolist() "
            "for f in range(4)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    assert json.loads(out.stdout) == [
        validation_split(np.arange(200), 4, f, 11)[1].tolist() for f in range(4)
    ]


@pytest.mark.parametrize(("folds", "fold", "message"), [
    (1, 0, "folds must be >= 2"), (4, 4, r"fold must lie in \[0, 4\)"),
    (4, -1, r"fold must lie in \[0, 4\)"), (5, 0, "cannot be cut into 5"),
])
def test_bad_folds_say_what_is_wrong(folds, fold, message):
    with pytest.raises(SplitError, match=message):
        validation_split(np.arange(8), folds, fold)


# --------------------------------------------------------------------------- subsets


def test_subset_per_class_keeps_every_class_and_is_seeded():
    labels = np.repeat(np.arange(5), [3, 8, 2, 10, 4])
    keep = subset_per_class(labels, 3, seed=0)
    counts = np.bincount(labels[keep], minlength=5)
    assert counts.tolist() == [3, 3, 2, 3, 3]
    assert np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(keep, subset_per_class(labels, 3, seed=0))
    assert not np.array_equal(keep, subset_per_class(labels, 3, seed=1))
    np.testing.assert_array_equal(subset_per_class(labels, None, 0), np.arange(27))
    with pytest.raises(SplitError, match=">= 2"):
        subset_per_class(labels, 1, 0)


def test_validation_view_trains_on_kept_classes_and_evaluates_held_out_ones():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(16), 6))
    view = validation_view(labels, 4, 2, seed=5, max_eval_per_class=3)
    train_classes, val_classes = validation_split(labels, 4, 2, 5)
    np.testing.assert_array_equal(view.train_classes, train_classes)
    np.testing.assert_array_equal(view.validation_classes, val_classes)
    assert set(labels[view.train_indices].tolist()) == set(train_classes.tolist())
    assert set(labels[view.eval_indices].tolist()) == set(val_classes.tolist())
    assert len(view.train_indices) == 12 * 6  # every image of the kept classes
    assert np.bincount(labels[view.eval_indices]).max() == 3  # at most 3 per held-out class
    # relabelled 0..C'-1 / 0..V-1 in sorted class order
    np.testing.assert_array_equal(view.train_labels(labels),
                                  np.searchsorted(train_classes, labels[view.train_indices]))
    assert sorted(set(view.eval_labels(labels).tolist())) == [0, 1, 2, 3]
    names = [f"class {i}" for i in range(16)]
    record = view.record(names)
    assert record["split"] == "validation" and (record["folds"], record["fold"]) == (4, 2)
    assert record["validation_classes"] == [names[c] for c in val_classes]
    assert record["train_classes"] == [names[c] for c in train_classes]
    json.dumps(record)  # a plain-JSON record


# --------------------------------------------------------------------------- datasets


def test_subset_relabels_and_the_class_names_follow(fixture_root):
    train = get_dataset("cub200", "train", fixture_root, progress=False)
    train.cache = DecodedImageCache([np.full((2, 2, 3), i, np.uint8) for i in range(len(train))],
                                    size=2)
    classes = np.array([1, 3])
    rows = np.flatnonzero(np.isin(train.labels, classes))
    sub = train.subset(rows, classes, split="validation")
    assert sub.split == "validation" and sub.num_classes == 2
    assert sub.class_names == [train.class_names[1], train.class_names[3]]
    assert sub.raw_class_names == [train.raw_class_names[1], train.raw_class_names[3]]
    np.testing.assert_array_equal(sub.labels, (train.labels[rows] == 3).astype(int))
    assert sub.paths == [train.paths[i] for i in rows]
    assert np.asarray(sub.load_image(0)).flat[0] == rows[0]  # the cache follows the images


# --------------------------------------------------------------------------- guard


@pytest.mark.parametrize(("name", "splits"), [
    ("cub200", ["test"]), ("cars196", ["test"]), ("sop", ["test"]),
    ("inshop", ["query", "gallery"]),
])
def test_the_guard_refuses_test_query_and_gallery_splits(fixture_root, name, splits):
    with forbid_test_split():
        assert is_test_split_forbidden() and os.environ[FORBID_TEST_ENV] == "1"
        assert len(get_dataset(name, "train", fixture_root, progress=False)) > 0
        for split in splits:
            with pytest.raises(TestSplitForbiddenError, match=f"{split!r} split of dataset"):
                get_dataset(name, split, fixture_root, progress=False)
    assert not is_test_split_forbidden()
    assert len(get_dataset(name, splits[0], fixture_root, progress=False)) > 0


def test_the_guard_is_the_environment_variable(monkeypatch, fixture_root):
    monkeypatch.setenv(FORBID_TEST_ENV, "1")
    with pytest.raises(TestSplitForbiddenError) as info:
        get_dataset("cub200", "test", fixture_root, progress=False)
    message = str(info.value)
    assert "data.split: validation" in message and FORBID_TEST_ENV in message
    assert isinstance(info.value, UserFacingError) and info.value.exit_code == EXIT_USAGE
    monkeypatch.setenv(FORBID_TEST_ENV, "0")
    assert not is_test_split_forbidden()
    get_dataset("cub200", "test", fixture_root, progress=False)


def test_the_guard_nests_restores_and_reaches_subprocesses(monkeypatch):
    monkeypatch.delenv(FORBID_TEST_ENV, raising=False)
    code = "from dml_study.data.splits import is_test_split_forbidden as f; print(f())"
    with forbid_test_split():
        with forbid_test_split():
            pass
        assert is_test_split_forbidden()  # the inner block did not lift the outer guard
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout.strip() == "True"
    assert FORBID_TEST_ENV not in os.environ
