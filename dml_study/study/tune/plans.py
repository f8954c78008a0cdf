"""What one search is: a tuned arm on one dataset, with everything fixed before it starts.

:func:`plan_searches` turns the study's ``tuning`` section into one :class:`SearchPlan` per
(dataset, arm), in file order (arms, then their datasets), optionally filtered
(``--arms``, ``--datasets``) and with another budget (``--trials``). A plan holds the arm's
``02_train`` parameters exactly as the grid builds its cell
(:func:`~dml_study.study.plan.grid.cell_parameters`: the study's ``train``, the tier's and
dataset's settings, the group's ``base``, the variant, then the arm's ``fixed``), the epochs
those resolve to, the search space, the budget and the search's directory::

    results/<study>/tuning/<dataset>/<group>.<variant>/
        journal.log  space.json  trials.csv  validation_classes.json  chosen.json

:meth:`SearchPlan.identity` is what must not change while a search is under way (space,
fixed parameters, epochs, sampler, pruner, objective, validation folds, trial seed): a
journal started under another identity is refused rather than mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_study.study.plan.config import (
    PrunerConfig,
    SamplerConfig,
    SearchParam,
    StudyConfig,
    StudyConfigError,
    TuningConfig,
    ValidationConfig,
    arm_budget,
    arm_datasets,
)
from dml_study.study.plan.grid import cell_parameters, resolved_config
from dml_study.study.plan.tuned import TUNING_DIRNAME, apply_values, tuning_root
from dml_study.study.tune.space import space_json
from dml_study.typed_fields import did_you_mean


def tuning_dir(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> Path:
    """``results/<study>/tuning``: the study's searches (outside the report's staging);
    ``dirname`` another directory of searches (the budget check's ``tuning-<k>x``)."""
    return tuning_root(config, dirname)


@dataclass(frozen=True)
class SearchPlan:
    """One search: arm ``group/variant`` on ``dataset`` (see the module docstring)."""

    study: str
    dataset: str
    group: str
    variant: str
    tier: str
    #: ``02_train`` parameters of every trial before the searched values (no seed).
    base: dict[str, Any] = field(hash=False)
    space: dict[str, SearchParam] = field(hash=False)
    #: The arm's ``fixed`` parameters (applied in ``base``; listed for ``chosen.json``).
    fixed: dict[str, Any] = field(hash=False)
    epochs: int = 1
    budget: int = 1
    directory: Path = Path(".")
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    objective: str = "MAP@R"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train_seed: int = 0
    #: The study's results directory: trial runs are ``<results_dir>/runs/<run name>``.
    results_dir: Path = Path("results")

    @property
    def arm(self) -> str:
        """``"<group>/<variant>"``."""
        return f"{self.group}/{self.variant}"

    @property
    def label(self) -> str:
        """``"<dataset> <group>/<variant>"`` for messages."""
        return f"{self.dataset} {self.arm}"

    @property
    def study_name(self) -> str:
        """The Optuna study's name in the journal."""
        return f"{self.study}.{self.dataset}.{self.group}.{self.variant}"

    @property
    def journal(self) -> Path:
        return self.directory / "journal.log"

    def identity(self) -> dict[str, Any]:
        """Everything the journal's trials depend on (compared on resume)."""
        return {
            "study": self.study, "dataset": self.dataset, "group": self.group,
            "variant": self.variant, "tier": self.tier, "space": space_json(self.space),
            "fixed": self.fixed, "base": self.base, "epochs": self.epochs,
            "sampler": {"name": self.sampler.name, "seed": self.sampler.seed,
                        "startup_trials": self.sampler.startup_trials},
            "pruner": {"name": self.pruner.name, "startup_trials": self.pruner.startup_trials,
                       "warmup_epochs": self.pruner.warmup_epochs},
            "objective": self.objective,
            "validation": {"folds": self.validation.folds,
                           "fold_ids": list(self.validation.fold_ids),
                           "seed": self.validation.seed},
            "train_seed": self.train_seed,
        }


def plan_searches(
    config: StudyConfig,
    *,
    arms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    trials: int | None = None,
    budget_check: bool = False,
) -> list[SearchPlan]:
    """One :class:`SearchPlan` per (dataset, arm) of the study's ``tuning`` section.

    ``arms`` (``group/variant``) and ``datasets`` keep only those searches; ``trials``
    replaces every arm's budget (the same for all: budgets stay equal). ``budget_check``:
    the searches of ``tuning.budget_check`` instead, with ``factor`` times each arm's budget
    (or ``trials``), in ``results/<study>/tuning-<factor>x/``. Raises
    :class:`StudyConfigError` for an unknown arm or dataset, or a study without ``tuning``
    (or without ``tuning.budget_check``).
    """
    tuning = config.tuning
    if tuning is None or not tuning.arms:
        where = config.source or config.name
        raise StudyConfigError(f"{where}: no 'tuning' section with arms; see docs/tuning.md")
    names = [a.name for a in tuning.arms]
    for name in arms or ():
        if name not in names:
            raise StudyConfigError(f"--arms: {name!r} is not a tuned arm; arms: "
                                   f"{', '.join(names)}{did_you_mean(name, names)}")
    every = sorted({d for a in tuning.arms for d in arm_datasets(config, a)})
    for dataset in datasets or ():
        if dataset not in every:
            raise StudyConfigError(f"--datasets: no arm is tuned on {dataset!r}; datasets: "
                                   f"{', '.join(every)}{did_you_mean(dataset, every)}")
    if trials is not None and trials < 1:
        raise StudyConfigError(f"--trials must be >= 1, got {trials}")
    check = tuning.budget_check
    if budget_check and check is None:
        where = config.source or config.name
        raise StudyConfigError(f"{where}: no 'tuning.budget_check' section; see docs/tuning.md")
    plans = []
    for arm in tuning.arms:
        if arms and arm.name not in arms:
            continue
        if budget_check and arm.name not in check.arms:
            continue
        for dataset in arm_datasets(config, arm):
            if datasets and dataset not in datasets:
                continue
            if budget_check and check.datasets and dataset not in check.datasets:
                continue
            if budget_check:
                budget = check.factor * (trials if trials is not None
                                         else arm_budget(config, arm))
                plans.append(_plan(config, tuning, arm, dataset, budget, check.dirname))
            else:
                plans.append(_plan(config, tuning, arm, dataset, trials))
    return plans


def _plan(config: StudyConfig, tuning: TuningConfig, arm: Any, dataset: str,
          trials: int | None, dirname: str = TUNING_DIRNAME) -> SearchPlan:
    group = config.group(arm.group)
    overrides = dict(group.variant_overrides())[arm.variant]
    cell_dataset = dataset if (group.datasets or arm.datasets) else None
    params, _ = cell_parameters(config, group, cell_dataset, overrides, seed=tuning.train_seed)
    params["dataset"] = dataset
    params.pop("seed")
    base = apply_values(params, arm.fixed)
    epochs = int(resolved_config({**base, "seed": tuning.train_seed})["schedule.epochs"])
    return SearchPlan(
        study=config.name, dataset=dataset, group=arm.group, variant=arm.variant,
        tier=group.tier, base=base, space=dict(arm.space), fixed=dict(arm.fixed),
        epochs=epochs, budget=trials if trials is not None else arm_budget(config, arm),
        directory=tuning_dir(config, dirname) / dataset / f"{arm.group}.{arm.variant}",
        sampler=tuning.sampler, pruner=tuning.pruner, objective=tuning.objective,
        validation=tuning.validation, train_seed=tuning.train_seed,
        results_dir=config.results_dir,
    )
