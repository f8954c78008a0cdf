"""The files of a search, and the study's ``tuning/summary.json`` (all committed).

Per search, ``results/<study>/tuning/<dataset>/<group>.<variant>/``:

``space.json``
    :meth:`~dml_study.study.tune.plans.SearchPlan.identity` (the searched space as resolved,
    each key with the dotted config key it names; the fixed ``02_train`` parameters; tier,
    epochs, sampler, pruner, objective, validation folds, trial seed), the ``budget`` and
    Optuna's version. Written when the search starts; a resumed search must match it.
``trials.csv``
    One row per trial, in number order: ``number, state, slot, value`` (validation metric at
    the best epoch, mean over folds), ``R@1`` (same epoch), ``best_epoch``, one column per
    searched key, ``run_name`` (``;`` between folds), ``seconds``, ``pruned_epoch``,
    ``retry_of`` (the interrupted trial it replaces), ``note`` (diverged / error /
    interrupted).
``validation_classes.json``
    The validation split of the trials' runs (contract A's file of a run directory; with
    several folds ``{"split", "folds", "seed", "fold_ids", "by_fold": {fold: ...}}``), each
    fold checked to be that fold of the training split's classes
    (:func:`~dml_study.study.tune.guard.check_validation_record`: by class id, disjoint from
    the trained classes, and so from the test classes, which the official splits keep apart).
``chosen.json``
    The interface to the final runs: the best COMPLETE trial (highest value, earliest on
    ties) with its ``params`` (the arm's ``fixed`` parameters and the searched values, by
    their study-file keys, for :func:`~dml_study.study.tune.space.apply_values` on the
    group's variant), ``epochs`` (its best validation epoch), ``value``, ``metric``,
    ``r_at_1``, ``trial``, ``n_trials`` (COMPLETE + PRUNED), ``budget``, ``complete``
    (``n_trials >= budget``) and ``validation``; ``train_parameters`` is the complete
    ``02_train`` parameter set of a final run (seed left to the group).

``results/<study>/tuning/summary.json``: one entry per search directory (budget, trials
done, chosen values), rebuilt from the files above, so every worker may rewrite it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from dml_study.atomic_io import atomic_write_csv, atomic_write_json
from dml_study.errors import UsageError
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.tuned import CHOSEN_FILE, TUNING_DIRNAME
from dml_study.study.tune.guard import ValidationLeakError as ValidationLeakError  # re-export
from dml_study.study.tune.guard import check_validation_record
from dml_study.study.tune.plans import SearchPlan, tuning_dir
from dml_study.study.tune.space import apply_values
from dml_study.study.tune.storage import RETRY_ATTR, SLOT_ATTR
from dml_study.training.run_dir import RunDirectory

SPACE_FILE = "space.json"
TRIALS_FILE = "trials.csv"
VALIDATION_FILE = "validation_classes.json"
SUMMARY_FILE = "summary.json"

#: Keys of ``space.json`` that may change between runs of one search.
MUTABLE_SPACE_KEYS = ("budget", "optuna")


#: The training split's class ids, or a function giving them (called only when a run's
#: validation split is checked), or ``None`` (unknown: each record is checked on its own).
ClassIds = np.ndarray | Callable[[], np.ndarray | None] | None


class SearchChangedError(UsageError):
    """A resumed search whose study-file settings differ from its journal's (exit 2)."""


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def space_record(plan: SearchPlan) -> dict[str, Any]:
    """The content of ``space.json``."""
    return {**_plain(plan.identity()), "budget": plan.budget, "optuna": optuna.__version__}


def check_space(plan: SearchPlan, *, has_trials: bool) -> None:
    """Write ``space.json``, or check that a search with trials was started as ``plan``.

    Raises :class:`SearchChangedError` naming the keys that changed.
    """
    path = plan.directory / SPACE_FILE
    record = space_record(plan)
    if has_trials and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before is not None:
            changed = sorted(k for k in set(before) | set(record)
                             if k not in MUTABLE_SPACE_KEYS and before.get(k) != record.get(k))
            if changed:
                raise SearchChangedError(
                    f"search {plan.label}: {', '.join(changed)} changed in the study file since "
                    f"its journal {plan.journal} was started; restore them, or move "
                    f"{plan.directory} away to start this search afresh"
                )
    atomic_write_json(path, record)


def _note(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    for key in ("diverged", "error"):
        if attrs.get(key):
            return f"{key}: {attrs[key]}"
    if attrs.get("interrupted"):
        return "interrupted (re-enqueued)"
    if attrs.get("over_budget"):
        return "over budget"
    return ""


def trial_rows(plan: SearchPlan, trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """The rows of ``trials.csv``."""
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        row: dict[str, Any] = {
            "number": trial.number, "state": trial.state.name,
            "slot": attrs.get(SLOT_ATTR, ""),
            "value": "" if trial.value is None else trial.value,
            "R@1": "" if attrs.get("R@1") is None else attrs["R@1"],
            "best_epoch": attrs.get("best_epoch", ""),
        }
        row.update({key: trial.params.get(key, "") for key in plan.space})
        row.update({
            "run_name": ";".join(attrs.get("run_names") or []),
            "seconds": attrs.get("seconds", ""),
            "pruned_epoch": attrs.get("pruned_epoch", ""),
            "retry_of": attrs.get(RETRY_ATTR, ""),
            "note": _note(trial),
        })
        rows.append(row)
    return rows


def choose(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The best COMPLETE trial that was not diverged (highest value; earliest on ties)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and not t.user_attrs.get("diverged") and t.user_attrs.get("best_epoch")]
    return min(done, key=lambda t: (-float(t.value), t.number)) if done else None


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count toward the budget (COMPLETE + PRUNED)."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def chosen_record(plan: SearchPlan, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
    """The content of ``chosen.json`` (``None`` before a trial completed)."""
    best = choose(trials)
    if best is None:
        return None
    searched = {key: best.params[key] for key in plan.space if key in best.params}
    params = {**plan.fixed, **searched}
    epochs = int(best.user_attrs["best_epoch"])
    train = apply_values(plan.base, searched)
    train["epochs"] = epochs
    n = counted(trials)
    return _plain({
        "dataset": plan.dataset, "group": plan.group, "variant": plan.variant,
        "tier": plan.tier, "params": params, "epochs": epochs,
        "value": float(best.value), "metric": plan.objective,
        "r_at_1": best.user_attrs.get("R@1"), "trial": best.number, "n_trials": n,
        "budget": plan.budget, "complete": n >= plan.budget,
        "validation": {"folds": plan.validation.folds,
                       "fold_ids": list(plan.validation.fold_ids),
                       "seed": plan.validation.seed},
        "trained_epochs": plan.epochs, "train_seed": plan.train_seed,
        "train_parameters": train,
    })


def validation_record(
    plan: SearchPlan, trials: Sequence[FrozenTrial], training_class_ids: ClassIds = None,
) -> dict[str, Any] | None:
    """The validation split of the trials' runs (``None``: no run wrote one yet).

    Read from the run directories of the first trial that has every fold's
    ``validation_classes.json``; each fold's record is checked with
    :func:`~dml_study.study.tune.guard.check_validation_record` against
    ``training_class_ids`` (the dataset's training split; see :data:`ClassIds`): by class
    id, the fold's validation classes are that fold of the training classes and disjoint
    from the trained ones. The test split is not opened. Raises
    :class:`~dml_study.study.tune.guard.ValidationLeakError` on any mismatch.
    """
    by_fold: dict[int, dict[str, Any]] = {}
    files: dict[int, Path] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        names = trial.user_attrs.get("run_names") or []
        if len(names) != len(plan.validation.fold_ids):
            continue
        paths = [RunDirectory.for_run(plan.results_dir, n).path / VALIDATION_FILE for n in names]
        if all(f.is_file() for f in paths):
            for fold, file in zip(plan.validation.fold_ids, paths, strict=True):
                by_fold[fold] = json.loads(file.read_text(encoding="utf-8"))
                files[fold] = file
            break
    if not by_fold:
        return None
    ids = training_class_ids() if callable(training_class_ids) else training_class_ids
    for fold, record in by_fold.items():
        check_validation_record(record, ids, folds=plan.validation.folds, fold=fold,
                                seed=plan.validation.seed,
                                where=f"search {plan.label}, fold {fold} ({files[fold]})")
    if len(by_fold) == 1:
        return next(iter(by_fold.values()))
    return {"split": "validation", "folds": plan.validation.folds,
            "seed": plan.validation.seed, "fold_ids": list(plan.validation.fold_ids),
            "by_fold": {str(f): r for f, r in by_fold.items()}}


def write_search_files(
    plan: SearchPlan, trials: Sequence[FrozenTrial], training_class_ids: ClassIds = None,
) -> dict[str, Any] | None:
    """Write ``trials.csv``, ``validation_classes.json`` and ``chosen.json``; the chosen."""
    atomic_write_csv(plan.directory / TRIALS_FILE, trial_rows(plan, trials))
    validation = validation_record(plan, trials, training_class_ids)
    if validation is not None:
        atomic_write_json(plan.directory / VALIDATION_FILE, validation)
    chosen = chosen_record(plan, trials)
    if chosen is not None:
        atomic_write_json(plan.directory / CHOSEN_FILE, chosen)
    return chosen


def read_chosen(directory: Path) -> dict[str, Any] | None:
    """A search directory's ``chosen.json`` (``None`` when there is none yet)."""
    path = Path(directory) / CHOSEN_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def summary_record(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> dict[str, Any]:
    """``tuning/summary.json``: every search directory of the study, in path order
    (``dirname``: another directory of searches, e.g. the budget check's ``tuning-2x``)."""
    root = tuning_dir(config, dirname)
    searches = []
    for space_file in sorted(root.glob(f"*/*/{SPACE_FILE}")):
        space = json.loads(space_file.read_text(encoding="utf-8"))
        chosen = read_chosen(space_file.parent) or {}
        trials_file = space_file.parent / TRIALS_FILE
        states: dict[str, int] = {}
        if trials_file.is_file():
            import csv

            with trials_file.open(encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    states[row["state"]] = states.get(row["state"], 0) + 1
        done = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        searches.append({
            "dataset": space["dataset"], "group": space["group"], "variant": space["variant"],
            "tier": space["tier"], "directory": str(space_file.parent.relative_to(root)),
            "budget": space["budget"], "n_trials": done, "complete": done >= space["budget"],
            "pruned": states.get("PRUNED", 0), "failed": states.get("FAIL", 0),
            "metric": space["objective"], "value": chosen.get("value"),
            "r_at_1": chosen.get("r_at_1"), "epochs": chosen.get("epochs"),
            "params": chosen.get("params"), "trial": chosen.get("trial"),
        })
    return {"study": config.name, "searches": searches}


def write_summary(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> Path:
    """Rewrite ``results/<study>/<dirname>/summary.json`` (default ``tuning``); its path."""
    path = tuning_dir(config, dirname) / SUMMARY_FILE
    atomic_write_json(path, summary_record(config, dirname))
    return path
