"""No trial sees the test split: the guard every trial runs under (contract A of issue #19).

The validation split itself (``data.split: validation``, ``val_folds``/``val_fold``/
``val_seed``, :func:`dml_study.data.splits.validation_split`) and the guard
(:func:`dml_study.data.splits.forbid_test_split`, env ``DML_STUDY_FORBID_TEST=1``) belong to
the data layer. This module is the tuner's one door to them:

* :func:`test_split_guard` wraps every in-process (frozen-tier) trial: any attempt to open a
  test, query or gallery split, or a test feature file, raises;
* :data:`FORBID_TEST_ENV` is set in the environment of every fine-tuned trial's worker, so
  the ``02_train`` kernel it starts runs under the same guard;
* :func:`require_validation_split` fails in one line when the data layer does not provide
  them, rather than letting a trial train on the test protocol.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from dml_study.errors import EXIT_USAGE, UserFacingError

#: Environment variable of contract A: when ``1``, opening a test split raises.
FORBID_TEST_ENV = "DML_STUDY_FORBID_TEST"

#: Module of contract A that provides the validation split and the guard.
SPLITS_MODULE = "dml_study.data.splits"


class ValidationSplitUnavailable(UserFacingError):
    """The data layer has no validation split (exit 2): tuning cannot run without it."""

    exit_code = EXIT_USAGE


def require_validation_split() -> None:
    """Raise :class:`ValidationSplitUnavailable` unless contract A's module is importable."""
    try:
        module = importlib.import_module(SPLITS_MODULE)
    except ImportError as exc:
        raise ValidationSplitUnavailable(
            f"tuning needs the class-disjoint validation split ({SPLITS_MODULE}, issue #19 "
            f"part 1), which this checkout does not have ({exc}); update dml_study"
        ) from None
    for name in ("forbid_test_split", "validation_split"):
        if not hasattr(module, name):
            raise ValidationSplitUnavailable(
                f"{SPLITS_MODULE} has no {name}(): tuning needs the validation split and the "
                "test-split guard of issue #19; update dml_study"
            )


@contextlib.contextmanager
def test_split_guard() -> Iterator[None]:
    """Run the body with the test split forbidden (:func:`dml_study.data.splits.
    forbid_test_split`)."""
    require_validation_split()
    module = importlib.import_module(SPLITS_MODULE)
    with module.forbid_test_split():
        yield
