"""The budget check: the committed searches run on with k times their trials, elsewhere.

Issue #19 asks, for the headline arms, whether 24 trials suffice: "re-run with twice the
trials and report whether the chosen values and the verdict move". ``tune --budget-check``
runs the searches of ``tuning.budget_check`` (:class:`~dml_study.study.plan.config.
BudgetCheckConfig`) with ``factor`` times their budget into ``results/<study>/tuning-<k>x/``;
``tuning/`` and its ``chosen.json``, which the final runs of the tuned protocol read, are not
touched.

**A larger search continues the committed one.** A fresh trial of slot ``s`` is sampled by a
TPE seeded with ``(sampler.seed, s, attempt)`` from the history before it
(:mod:`~dml_study.study.tune.search`), and nothing in a trial depends on the budget. So the
first ``n`` trials of a ``k·n``-trial search are exactly the ``n`` trials of the committed
search (for one worker), and :func:`continue_from_committed` starts the larger search from a
copy of the committed journal instead of training those ``n`` trials again: the check costs
``(k − 1)·n`` trials per arm, and its first ``n`` trials are, by construction, the ones the
committed choice was made from. The copy is made once; afterwards the larger search resumes
from its own journal like any search. Its trial runs are the committed search's runs
(``results/runs/``, named by their config), so nothing is retrained either way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dml_study.errors import EXIT_USAGE, UserFacingError
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.tuned import read_chosen_file
from dml_study.study.tune.plans import SearchPlan, plan_searches
from dml_study.study.tune.storage import OwnedFileLock


class BudgetCheckNotReadyError(UserFacingError):
    """The committed search a budget check continues is not complete (exit 2)."""

    exit_code = EXIT_USAGE


def committed_plan(config: StudyConfig, plan: SearchPlan) -> SearchPlan:
    """The committed search (in ``tuning/``) that the budget check's ``plan`` continues."""
    (base,) = plan_searches(config, arms=[plan.arm], datasets=[plan.dataset])
    return base


def continue_from_committed(config: StudyConfig, plan: SearchPlan) -> Path | None:
    """Start the budget check's search ``plan`` from a copy of the committed journal.

    Does nothing when ``plan`` has a journal already (it resumes from its own). Raises
    :class:`BudgetCheckNotReadyError` when the committed search has not spent its budget.
    Returns the journal copied, if any.
    """
    if plan.journal.is_file():
        return None
    base = committed_plan(config, plan)
    chosen = read_chosen_file(base.directory)
    if chosen is None or not chosen.get("complete") or not base.journal.is_file():
        raise BudgetCheckNotReadyError(
            f"budget check of {plan.label}: the committed search {base.directory} is not "
            "complete; run `python -m dml_study.study tune` first (the check continues it)")
    if plan.budget <= base.budget:
        raise BudgetCheckNotReadyError(
            f"budget check of {plan.label}: its budget ({plan.budget}) must exceed the "
            f"committed search's ({base.budget})")
    plan.directory.mkdir(parents=True, exist_ok=True)
    staged = plan.journal.with_name(plan.journal.name + ".copying")
    # The journal's own lock (SafeJournalBackend's): no record is appended while it is copied.
    with OwnedFileLock(f"{base.journal}.lock").held():
        shutil.copyfile(base.journal, staged)
    os.replace(staged, plan.journal)
    return plan.journal
