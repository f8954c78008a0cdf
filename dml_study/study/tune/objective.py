r"""The objective: a trial's values -> its validation runs -> one number (and its epoch).

A trial of an arm trains one run per validation fold in ``tuning.validation.fold_ids``:
the arm's ``02_train`` parameters (the grid's cell, :func:`~dml_study.study.plan.grid.
cell_parameters`), the searched values on top (:func:`~dml_study.study.tune.space.
apply_values`), the trial seed ``tuning.train_seed``, and the validation split of contract A
(:func:`validation_parameters`: ``split: validation``, ``val_folds``, ``val_fold``,
``val_seed``), so the run trains on the training classes outside the fold and evaluates
retrieval among the training images of the fold's classes; the test split is never opened.

**The number.** Every run evaluates after every epoch. With :math:`v_f(e)` the validation
metric (``tuning.objective``, MAP@R by default) of fold :math:`f` after epoch :math:`e`,
the trial's value is

.. math::

    V = \max_e \bar v(e), \qquad \bar v(e) = \frac{1}{|F|}\sum_{f \in F} v_f(e),

over the epochs every fold evaluated, and the trial's *best epoch* is the (earliest) arg max.
One epoch for all folds, rather than each fold's own best, because the final runs train one
epoch count: the chosen ``epochs`` is the best epoch of the chosen trial, so epochs are
selected on validation data like every other hyperparameter. With one fold this is the run's
best validation epoch (``metrics.json``'s ``best`` in contract A). R@1 is recorded at the same
epoch (:class:`Score`).

**Intermediate values** (pruning, the search trace). Run ``i`` of a trial (fold ``fold_ids[i]``)
reports :math:`v_f(e)` at step :math:`i \cdot E + e` (``E`` the arm's epochs), so the median
rule compares a trial with the others at the same fold and epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dml_study.study.plan.config import ValidationConfig
from dml_study.study.plan.tuned import VALIDATION_PARAMETERS, validation_split_parameters
from dml_study.study.tune.space import apply_values

__all__ = ["VALIDATION_PARAMETERS", "RunOutcome", "Score", "TrialRun", "report_step", "score",
           "trial_runs", "validation_parameters"]

def validation_parameters(validation: ValidationConfig, fold: int) -> dict[str, Any]:
    """The ``02_train`` parameters of validation fold ``fold`` (contract A of issue #19;
    :func:`dml_study.study.plan.tuned.validation_split_parameters`)."""
    return validation_split_parameters(validation, fold)


@dataclass(frozen=True)
class TrialRun:
    """One run of a trial: fold ``fold`` of trial ``trial`` with complete ``params``."""

    trial: int
    index: int  # position of the fold in ``fold_ids``: the run's block of report steps
    fold: int
    params: dict[str, Any] = field(hash=False)


def trial_runs(
    base: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    trial: int,
    validation: ValidationConfig,
    seed: int,
) -> list[TrialRun]:
    """The runs of one trial: ``base`` with ``values`` applied, the seed and each fold."""
    params = apply_values(base, values)
    params["seed"] = int(seed)
    return [TrialRun(trial, i, fold, {**params, **validation_parameters(validation, fold)})
            for i, fold in enumerate(validation.fold_ids)]


@dataclass
class RunOutcome:
    """What training did with one :class:`TrialRun`.

    ``status``: ``trained`` | ``reused`` (finished earlier: a re-asked identical run) |
    ``pruned`` (stopped by the pruner after ``records[-1]``) | ``diverged`` (non-finite loss
    after ``records``) | ``failed`` (the run could not train; ``error`` says why).
    ``records``: the run's per-epoch records (epoch >= 1) with the validation metrics.
    """

    run_name: str
    status: str
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class Score:
    """A trial's value: the validation metric at its best epoch (mean over folds)."""

    value: float
    epoch: int
    r_at_1: float | None
    per_fold: tuple[float, ...]


def score(records_by_run: Sequence[Sequence[Mapping[str, Any]]], metric: str) -> Score | None:
    """The :class:`Score` of a trial from its runs' per-epoch records (``None``: no epoch
    that every run evaluated). Ties go to the earliest epoch."""
    tables = [{int(r["epoch"]): r for r in records if r.get(metric) is not None
               and int(r["epoch"]) >= 1} for records in records_by_run]
    if not tables:
        return None
    epochs = sorted(set.intersection(*(set(t) for t in tables)))
    best: Score | None = None
    for epoch in epochs:
        per_fold = tuple(float(t[epoch][metric]) for t in tables)
        value = sum(per_fold) / len(per_fold)
        if best is None or value > best.value:
            r1 = [t[epoch].get("R@1") for t in tables]
            r_at_1 = (sum(float(r) for r in r1) / len(r1)) if all(r is not None for r in r1) \
                else None
            best = Score(value, epoch, r_at_1, per_fold)
    return best


def report_step(index: int, epoch: int, epochs: int) -> int:
    """The intermediate-value step of run ``index`` of a trial after ``epoch`` (1-based)."""
    return index * epochs + epoch
