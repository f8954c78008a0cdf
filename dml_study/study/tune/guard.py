"""No trial sees the test split: the guard every trial runs under, and the check of its folds.

The validation split itself (``data.split: validation``, ``val_folds``/``val_fold``/
``val_seed``, :func:`dml_study.data.splits.validation_split`) and the guard
(:func:`dml_study.data.splits.forbid_test_split`, env ``DML_STUDY_FORBID_TEST=1``) belong to
the data layer (contract A of issue #19, ``docs/validation.md``). This module is the tuner's
one door to them:

* :func:`test_split_guard` wraps every in-process (frozen-tier) trial: any attempt to open a
  test, query or gallery split, or a test feature file (``…-test.npz``), raises
  :class:`~dml_study.data.splits.TestSplitForbiddenError`;
* :data:`FORBID_TEST_ENV` is set in the environment of every fine-tuned trial's worker, so
  the ``02_train`` kernel it starts runs under the same guard;
* :func:`check_validation_record` checks a trial run's ``validation_classes.json`` against
  the dataset's **training** split, without opening the test split.

**Why the training split suffices for "disjoint from the test classes".** A run's validation
classes are cut from the class ids of the official *training* split
(:func:`~dml_study.data.splits.validation_split`), and in all six datasets the official
training and test splits are class-disjoint by construction: CUB-200-2011 trains on classes
1-100 and tests on 101-200, Cars196 1-98 / 99-196, SOP and In-Shop split by product
(``Ebay_train.txt`` / ``Ebay_test.txt``, ``list_eval_partition.txt``), and the embedded icons
and glyphs assign every class to one split when they are built (``dml_study/data/
embedded.py``). So a validation class id that is a class id of the training split is not a
test class. The test split is never opened to check it: not under the guard, and not after
the trials either (``tests/study/tune/test_tune_e2e.py`` records every split opened).

The check uses the label ids of the record (``train_labels``/``validation_labels``, the
labels of the whole training split), not the class names: names need not be unique (two
glyphs may share a Unicode name), so a name-based overlap would be a false alarm and a
name-based membership test could miss a swapped class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from dml_study.data.splits import FORBID_TEST_ENV, forbid_test_split, validation_split
from dml_study.errors import EXIT_FAILED, UserFacingError

__all__ = [
    "FORBID_TEST_ENV",
    "ValidationLeakError",
    "check_validation_record",
    "test_split_guard",
]


class ValidationLeakError(UserFacingError):
    """A run's validation classes are not a fold of the training classes (exit 1)."""

    exit_code = EXIT_FAILED


@contextmanager
def test_split_guard() -> Iterator[None]:
    """Run the body with the test split forbidden (:func:`dml_study.data.splits.
    forbid_test_split`; sets ``$DML_STUDY_FORBID_TEST=1`` for processes started inside)."""
    with forbid_test_split():
        yield


test_split_guard.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _ids(record: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    values = record.get(key)
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise ValidationLeakError(
            f"{where}: no list of class ids {key!r} (contract A of issue #19 writes "
            "train_labels and validation_labels); the run cannot be checked: retrain it with "
            "this version of dml_study"
        )
    return np.asarray(values, dtype=np.int64)


def check_validation_record(
    record: Mapping[str, Any],
    training_class_ids: np.ndarray | None,
    *,
    folds: int,
    fold: int,
    seed: int,
    where: str = "validation_classes.json",
) -> None:
    """Raise :class:`ValidationLeakError` unless ``record`` is fold ``fold`` of the training
    classes.

    ``record`` is a run's ``validation_classes.json``; ``training_class_ids`` are the class ids
    of the dataset's training split (``None``: unknown, then only the record's own
    consistency is checked). Checked: ``split`` is ``"validation"`` with the search's
    ``folds``/``fold``/``seed``; the validation ids and the trained ids are disjoint, and both
    are training-split ids; the validation ids are exactly
    :func:`~dml_study.data.splits.validation_split` of the training ids (recomputed here), and
    the trained ids are the rest. With the official splits class-disjoint (module
    docstring), the validation classes are then no test classes.
    """
    if record.get("split") != "validation":
        raise ValidationLeakError(f"{where}: split {record.get('split')!r}, expected "
                                  "'validation': the trial did not train a validation run")
    got = {k: record.get(k) for k in ("folds", "fold", "seed")}
    if got != {"folds": folds, "fold": fold, "seed": seed}:
        raise ValidationLeakError(f"{where}: folds/fold/seed {got} differ from the search's "
                                  f"({folds}, {fold}, {seed})")
    validation = _ids(record, "validation_labels", where)
    trained = _ids(record, "train_labels", where)
    problems = []
    both = np.intersect1d(validation, trained)
    if len(both):
        problems.append(f"classes {both[:5].tolist()} are both trained on and validated")
    if training_class_ids is not None:
        training = np.unique(np.asarray(training_class_ids))
        outside = np.setdiff1d(np.union1d(validation, trained), training)
        if len(outside):
            problems.append(f"class ids {outside[:5].tolist()} are not classes of the training "
                            "split")
        else:
            expected_train, expected_val = validation_split(training, folds, fold, seed)
            if not (np.array_equal(np.sort(validation), expected_val)
                    and np.array_equal(np.sort(trained), expected_train)):
                problems.append(f"the classes are not fold {fold} of {folds} (seed {seed}) of "
                                "the training split's classes")
    if problems:
        raise ValidationLeakError(
            f"{where}: {'; '.join(problems)}: the validation split is broken, do not use "
            "these results"
        )
