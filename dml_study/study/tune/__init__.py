"""Equal-budget hyperparameter searches on validation classes (issue #19; docs/tuning.md).

This subpackage owns the fair baseline of the study, the protocol of Musgrave, Belongie &
Lim's *Metric Learning Reality Check* (ECCV 2020): every arm named in the study file's
``tuning`` section gets the same number of trials of Optuna's TPE sampler with a fixed seed,
each trial trains on the training classes outside a class-disjoint validation fold and is
scored by its validation MAP@R at its best validation epoch, and the best trial's values
and epoch count are written to ``results/<study>/tuning/<dataset>/<group>.<variant>/
chosen.json`` for the final runs. One concept per module: the search space as Optuna
distributions (:mod:`~.space`), one search's plan from the study file (:mod:`~.plans`), a
trial's runs and its score (:mod:`~.objective`), the test-split guard (:mod:`~.guard`),
training trial runs through the project's tiers and launchers (:mod:`~.trainers`, with the
batched-frozen seam ``train_frozen_batch``), the kill-safe journal and stale-trial recovery
(:mod:`~.storage`), the budgeted ask/train/tell loop (:mod:`~.search`), the committed files
(:mod:`~.results`) and the ``tune`` command (:mod:`~.cli`). It imports the plan, the tiers
and the launchers, never the analysis or the report, which read its files.
"""

from dml_study.study.tune.plans import SearchPlan, plan_searches, tuning_dir
from dml_study.study.tune.results import read_chosen
from dml_study.study.tune.search import Search, SearchOutcome, run_search
from dml_study.study.tune.space import apply_values, suggest

__all__ = [
    "Search",
    "SearchOutcome",
    "SearchPlan",
    "apply_values",
    "plan_searches",
    "read_chosen",
    "run_search",
    "suggest",
    "tuning_dir",
]
