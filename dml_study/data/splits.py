r"""Class-disjoint validation folds, per-class subsets, and the guard that keeps tuning off test.

Hyperparameters chosen on the test split overstate what a method does on unseen classes:
*A Metric Learning Reality Check* (Musgrave, Belongie & Lim, ECCV 2020, code:
powerful-benchmarker) tunes every method on **class-disjoint validation folds of the
training classes** and touches the test classes only for the final runs. This module is
the one place that decides those folds and subsets, for both tiers:

* :func:`validation_split`: the sorted training class ids, permuted by a seed and cut into
  ``folds`` near-equal folds; fold ``fold`` is held out for validation, the rest is trained
  on. MLRC uses 4 folds (powerful-benchmarker's ``ClassDisjointSplitManager``:
  ``num_training_partitions: 4``), i.e. 25 % of the training classes held out per fold.
  MLRC's default cuts the *sorted* class list into contiguous folds (scikit-learn ``KFold``
  without shuffling); we shuffle first (``KFold``'s ``shuffle=True`` option) so that a fold
  is not a block of the class order (glyph classes are ordered by code point, icon classes
  by name). The permutation depends on ``seed`` only, so the ``folds`` folds of one seed
  partition the classes, and every DDP rank (which calls this with the same arguments)
  gets the same split without communicating.
* :func:`subset_per_class`: at most ``limit`` images of every class, a seeded choice
  (the frozen tier's glyph subset rule, shared with the fine-tuned tier).
* :func:`validation_view`: both rules applied to one training split: which rows train
  (relabelled ``0..C'-1`` in sorted class order) and which rows evaluate.
* The **test-split guard**: inside :func:`forbid_test_split` (or with
  ``DML_STUDY_FORBID_TEST=1`` in the environment, which the context manager sets, so
  subprocesses and papermill kernels started inside it inherit it), opening a test, query
  or gallery split (:func:`dml_study.data.get_dataset`) or a frozen-tier test feature file
  raises :class:`TestSplitForbiddenError`. The tuner runs every trial under it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dml_study.errors import EXIT_USAGE, UserFacingError

#: Environment variable of the test-split guard: ``1`` forbids opening any evaluation split
#: other than the training split (``0``, empty or unset: allowed).
FORBID_TEST_ENV = "DML_STUDY_FORBID_TEST"

#: Values of ``data.split``: evaluate on the test split (or query/gallery), or on held-out
#: training classes.
SPLITS: tuple[str, ...] = ("test", "validation")

#: MLRC's number of class-disjoint folds (powerful-benchmarker, ``num_training_partitions``).
DEFAULT_VAL_FOLDS = 4

#: Seeds of the per-class subsets when no other seed is given: training images, then
#: evaluation images. They equal the frozen tier's ``feature_seed`` and ``feature_seed + 1``
#: at its default ``feature_seed: 0``, so a fine-tuned run with the same
#: ``max_*_per_class`` uses the frozen tier's images.
TRAIN_SUBSET_SEED = 0
EVAL_SUBSET_SEED = 1


class SplitError(ValueError):
    """Folds or subsets that cannot be made (too few classes, a bad fold index)."""


class TestSplitForbiddenError(UserFacingError):
    """A test, query or gallery split (or test features) was asked for under the guard."""

    __test__ = False  # not a pytest test class despite its name
    exit_code = EXIT_USAGE


# --------------------------------------------------------------------------- folds


def validation_split(
    labels_or_class_ids: Sequence[Any] | np.ndarray,
    folds: int = DEFAULT_VAL_FOLDS,
    fold: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_class_ids, validation_class_ids)``: class-disjoint, sorted numpy arrays.

    Args:
        labels_or_class_ids: per-image labels or the class ids themselves (only the set of
            distinct values matters).
        folds: number of near-equal folds (``>= 2``); fold sizes differ by at most one
            class (:func:`numpy.array_split`), so ``folds=4`` holds out 25 % (±1 class).
        fold: which fold is the validation set, ``0 <= fold < folds``.
        seed: permutes the sorted class ids (:func:`numpy.random.default_rng`) before the
            cut; the permutation does not depend on ``folds`` or ``fold``, so the folds of
            one seed partition the classes.

    Every fold must hold at least two classes (retrieval among one class is trivially
    perfect) and at least two classes must remain for training.
    """
    folds, fold, seed = int(folds), int(fold), int(seed)
    if folds < 2:
        raise SplitError(f"validation folds must be >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise SplitError(f"validation fold must lie in [0, {folds}), got {fold}")
    class_ids = np.unique(np.asarray(labels_or_class_ids))
    if len(class_ids) < 2 * folds:
        raise SplitError(
            f"{len(class_ids)} training classes cannot be cut into {folds} validation folds "
            f"of >= 2 classes each; use fewer folds (data.val_folds)"
        )
    order = np.random.default_rng(seed).permutation(class_ids)
    validation = np.sort(np.array_split(order, folds)[fold])
    train = np.setdiff1d(class_ids, validation)  # sorted
    return train, validation


# --------------------------------------------------------------------------- subsets


def subset_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``limit`` images of every class (seeded choice).

    Every class is kept (smaller classes whole); ``limit=None`` keeps everything. The
    images of class ``c`` are a prefix of a permutation drawn from
    ``default_rng([seed, limit])``, class by class in sorted label order, so the choice
    depends on the labels' pattern, ``limit`` and ``seed`` only.
    """
    labels = np.asarray(labels)
    if limit is None:
        return np.arange(len(labels))
    if limit < 2:
        raise SplitError(f"max_*_per_class must be >= 2 (retrieval needs pairs), got {limit}")
    rng = np.random.default_rng([seed, limit])
    keep = [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def relabel(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``labels`` mapped to their position in ``classes`` (which must hold every label)."""
    labels, classes = np.asarray(labels), np.asarray(classes)
    position = np.searchsorted(classes, labels)
    position = np.clip(position, 0, max(len(classes) - 1, 0))
    if len(labels) and not np.array_equal(classes[position], labels):
        raise SplitError("labels outside the given classes cannot be relabelled")
    return position.astype(np.int64)


@dataclass(frozen=True)
class ValidationView:
    """Which rows of a training split a validation run trains on and evaluates.

    Attributes:
        folds, fold, seed: the :func:`validation_split` arguments.
        train_classes: labels (in the training split's label space) trained on, sorted;
            a trained row's new label is its class's position here.
        validation_classes: held-out labels, sorted.
        train_indices: rows trained on (sorted).
        eval_indices: rows evaluated (sorted; validation classes only).
    """

    folds: int
    fold: int
    seed: int
    train_classes: np.ndarray
    validation_classes: np.ndarray
    train_indices: np.ndarray
    eval_indices: np.ndarray

    def train_labels(self, labels: np.ndarray) -> np.ndarray:
        """Training labels ``0..C'-1`` of the trained rows (``labels`` of the whole split)."""
        return relabel(np.asarray(labels)[self.train_indices], self.train_classes)

    def eval_labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels ``0..V-1`` of the evaluated rows (positions in :attr:`validation_classes`)."""
        return relabel(np.asarray(labels)[self.eval_indices], self.validation_classes)

    def record(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The ``validation_classes.json`` record; ``class_names`` of the training split.

        ``{"split": "validation", "folds", "fold", "seed", "train_classes": [names],
        "validation_classes": [names], "train_labels": [...], "validation_labels": [...]}``
        (labels are those of the whole training split, names in the same order).
        """
        names = list(class_names)
        return {
            "split": "validation", "folds": self.folds, "fold": self.fold, "seed": self.seed,
            "train_classes": [str(names[c]) for c in self.train_classes],
            "validation_classes": [str(names[c]) for c in self.validation_classes],
            "train_labels": [int(c) for c in self.train_classes],
            "validation_labels": [int(c) for c in self.validation_classes],
        }


def validation_view(
    labels: np.ndarray,
    folds: int = DEFAULT_VAL_FOLDS,
    fold: int = 0,
    seed: int = 0,
    *,
    max_eval_per_class: int | None = None,
    eval_subset_seed: int = EVAL_SUBSET_SEED,
) -> ValidationView:
    """Cut a training split (its per-image ``labels``) into a validation run's two parts.

    The classes are cut by :func:`validation_split`; the rows of the held-out classes are
    then limited to ``max_eval_per_class`` images each (:func:`subset_per_class` with
    ``eval_subset_seed``, applied to the held-out rows in their order). A per-class subset
    of the *training* images is the caller's, before this call: it decides which images
    the split holds at all.
    """
    labels = np.asarray(labels)
    train_classes, validation_classes = validation_split(labels, folds, fold, seed)
    train_rows = np.flatnonzero(np.isin(labels, train_classes))
    held_out = np.flatnonzero(np.isin(labels, validation_classes))
    eval_rows = held_out[subset_per_class(labels[held_out], max_eval_per_class,
                                          eval_subset_seed)]
    return ValidationView(int(folds), int(fold), int(seed), train_classes, validation_classes,
                          train_rows, eval_rows)


# --------------------------------------------------------------------------- guard


def is_test_split_forbidden() -> bool:
    """Whether the test-split guard is on (``$DML_STUDY_FORBID_TEST`` set, not ``0``)."""
    return os.environ.get(FORBID_TEST_ENV, "0").strip() not in ("", "0")


def check_test_split_allowed(what: str) -> None:
    """Raise :class:`TestSplitForbiddenError` naming ``what`` when the guard is on."""
    if is_test_split_forbidden():
        raise TestSplitForbiddenError(
            f"{what} was requested, but the test split is forbidden here "
            f"({FORBID_TEST_ENV}=1, set by forbid_test_split(): hyperparameter tuning must "
            "never see the test classes); train with data.split: validation (-p split "
            f"validation), or run outside the tuner / unset {FORBID_TEST_ENV} for final runs"
        )


@contextlib.contextmanager
def forbid_test_split() -> Iterator[None]:
    """Forbid opening test, query and gallery splits and test features inside the block.

    Sets ``$DML_STUDY_FORBID_TEST=1`` (restored on exit), so processes started inside the
    block (papermill kernels, ``torchrun`` ranks, workers) are guarded too.
    """
    previous = os.environ.get(FORBID_TEST_ENV)
    os.environ[FORBID_TEST_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORBID_TEST_ENV, None)
        else:
            os.environ[FORBID_TEST_ENV] = previous
