"""The tuned protocol: final runs built from the committed searches (issue #19, contract C).

A group with ``protocols: [preset, tuned]`` has two kinds of cells. A *preset* cell is the
variant as the study file writes it, on the dataset preset. A *tuned* cell is the same
variant with the values its tuned arm chose applied on top
(``results/<study>/tuning/<dataset>/<group>.<variant>/chosen.json``, written by
``python -m dml_study.study tune``). Its parameters are, in order:

1. the grid's cell (:func:`~dml_study.study.plan.grid.cell_parameters`: the study's
   ``train``, the tier's and dataset's settings, the group's ``base``, the variant, the seed);
2. ``chosen.json``'s ``params`` (the arm's ``fixed`` parameters and the searched values,
   :func:`apply_values`);
3. ``epochs`` = the chosen trial's best validation epoch (``chosen.json``'s ``epochs``);
4. ``split: test``: a final run trains on every training class and is the only kind of run
   evaluated on the test split.

The seeds are the group's ``tuned_seeds`` (issue #19: >= 10 frozen, >= 5 fine-tuned). A group
with ``tuned_from: G`` reads the arms ``G/<variant>`` instead of its own (the lr grid of the
robustness claim); ``lr_factors`` then multiply the tuned lr (:func:`scale_lr`).

**The choice must belong to this cell.** ``chosen.json`` records the complete ``02_train``
parameters the search trained (``train_parameters``); a tuned cell whose parameters name a
different run (:func:`dml_study.config.run_name`: the study file's group, variant or
training settings changed since the search) is refused with
:class:`StaleTunedValuesError`, and a search that has not spent its budget
(``complete: false``) with :class:`MissingTunedValuesError`, like a missing file: a choice made
on fewer trials than the other arms' would break the equal budgets.

The budget check (:class:`~dml_study.study.plan.config.BudgetCheckConfig`) reads the same
files from ``results/<study>/tuning-<k>x/`` for its ``tuned-<k>x`` cells.

:func:`apply_values` lives here, in the plan, rather than in :mod:`dml_study.study.tune` (the
searches), because the grid applies chosen values and the plan imports nothing after it;
:mod:`dml_study.study.tune.space` re-exports it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dml_study.config import TRAIN_PARAMETERS, config_from_parameters, resolve_key, run_name
from dml_study.errors import EXIT_USAGE, UserFacingError
from dml_study.study.plan.config import (
    DICT_CONFIG_FIELDS,
    StudyConfig,
    StudyConfigError,
    ValidationConfig,
    search_key,
)

#: ``results/<study>/<TUNING_DIRNAME>/``: the committed searches of the tuned protocol.
TUNING_DIRNAME = "tuning"

#: The interface of a search to the final runs (contract B of issue #19).
CHOSEN_FILE = "chosen.json"

#: The protocol of the cells built from ``tuning/``.
TUNED = "tuned"


class MissingTunedValuesError(StudyConfigError, UserFacingError):
    """Tuned cells whose search has no complete ``chosen.json`` yet (exit 2)."""

    exit_code = EXIT_USAGE


class StaleTunedValuesError(StudyConfigError, UserFacingError):
    """A ``chosen.json`` tuned for another configuration than the cell's (exit 2)."""

    exit_code = EXIT_USAGE


# --------------------------------------------------------------------------- where


def tuning_root(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> Path:
    """``results/<study>/<dirname>``: a study's searches (outside the report's staging)."""
    return config.results_dir / config.name / dirname


def search_directory(config: StudyConfig, dataset: str, group: str, variant: str,
                     dirname: str = TUNING_DIRNAME) -> Path:
    """``results/<study>/<dirname>/<dataset>/<group>.<variant>``: one search's files."""
    return tuning_root(config, dirname) / str(dataset) / f"{group}.{variant}"


def protocol_dirname(config: StudyConfig, protocol: str) -> str:
    """The tuning directory a protocol's cells read: ``tuning`` for ``tuned``, the budget
    check's ``tuning-<k>x`` for its ``tuned-<k>x``."""
    if protocol == TUNED:
        return TUNING_DIRNAME
    check = config.tuning.budget_check if config.tuning is not None else None
    if check is not None and protocol == check.protocol:
        return check.dirname
    raise ValueError(f"protocol {protocol!r} reads no tuning directory")


def tune_command(config: StudyConfig, budget_check: bool = False) -> str:
    """The command that writes the searches a study's tuned cells read: ``make tune`` for
    the default study (it runs the budget check too), else ``python -m dml_study.study tune
    --config <file> [--budget-check]``."""
    source = config.source
    where = "STUDY" if source is None else _relative(config, source)
    if where == "studies/embedded.yaml":
        return "make tune"
    return f"python -m dml_study.study tune --config {where}" + \
        (" --budget-check" if budget_check else "")


# --------------------------------------------------------------------------- the values


def apply_values(params: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``02_train`` parameters ``params`` with the searched (or chosen) ``values`` applied.

    A key that is a ``02_train`` parameter is set directly; a key of a mapping field
    (``loss.params.<name>``, ``model.timm_kwargs.<name>``) is merged into that mapping in
    ``overrides``; any other config key goes into ``overrides`` under its own spelling. A
    value replaces every other spelling of the same key (``lr`` / ``optim.lr``), so the
    result has each key once. ``params`` is not modified.
    """
    out = copy.deepcopy(dict(params))
    overrides = dict(out.get("overrides") or {})
    for key, value in values.items():
        dotted = search_key(key)
        field = next((f for f in DICT_CONFIG_FIELDS if dotted.startswith(f + ".")), None)
        if field is not None:
            entry = dotted[len(field) + 1:]
            merged: dict[str, Any] = {}
            for other in [k for k in overrides if _dotted(k) == field]:
                merged.update(overrides.pop(other) or {})
            overrides[field] = {**merged, entry: value}
            continue
        for other in [k for k in overrides if _dotted(k) == dotted]:
            del overrides[other]
        for other in [k for k in out if k in TRAIN_PARAMETERS and k != "overrides"
                      and _dotted(k) == dotted]:
            del out[other]
        if key in TRAIN_PARAMETERS:
            out[key] = value
        else:
            overrides[key] = value
    if overrides:
        out["overrides"] = overrides
    return out


def _dotted(key: str) -> str | None:
    """The dotted form of a parameter / override key (``None`` for one that is not a key)."""
    try:
        return resolve_key(key)
    except ValueError:
        return None


def final_split_parameters() -> dict[str, Any]:
    """``{"split": "test"}``: a final run evaluates the test split (contract A's key).

    Empty on a checkout whose config has no ``split`` key yet (before issue #19 part 1),
    where every run evaluates the test split; contract A leaves ``split: test`` out of a
    run's identity, so either way the run name is the same.
    """
    return {"split": "test"} if "split" in TRAIN_PARAMETERS else {}


#: Training parameters of contract A that make a run a validation run (flat names).
VALIDATION_PARAMETERS: tuple[str, ...] = ("split", "val_folds", "val_fold", "val_seed")


def validation_split_parameters(validation: ValidationConfig, fold: int) -> dict[str, Any]:
    """The ``02_train`` parameters of validation fold ``fold`` of ``tuning.validation``
    (contract A of issue #19): train outside the fold, evaluate among its classes."""
    return {"split": "validation", "val_folds": int(validation.folds), "val_fold": int(fold),
            "val_seed": int(validation.seed)}


def scale_lr(params: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """``params`` with the learning rate multiplied by ``factor`` (the lr as the config
    resolves it: the dataset preset's when ``params`` leave it unset).

    In the frozen tier ``optim.lr`` scales the head (``lr × head_lr_mult``) and the proxies
    (``lr × proxy_lr_mult``), so the factor moves every step size of the run together.
    """
    lr = float(config_from_parameters(dict(params)).optim.lr)
    return apply_values(params, {"lr": lr * float(factor)})


# --------------------------------------------------------------------------- chosen.json


def read_chosen_file(directory: Path) -> dict[str, Any] | None:
    """A search directory's ``chosen.json`` (``None`` when there is none)."""
    path = Path(directory) / CHOSEN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MissingTunedValuesError(
            f"{path} is not valid JSON ({exc}); restore it (git checkout -- {path}) or re-run "
            "its search") from None


def _relative(config: StudyConfig, path: Path) -> str:
    try:
        return str(path.relative_to(config.root))
    except ValueError:
        return str(path)


class ChosenValues:
    """The ``chosen.json`` files a study's tuned cells read, each read once.

    :meth:`get` returns a file's content or records why it cannot be used (missing,
    incomplete, about another arm); :meth:`raise_missing` then raises one
    :class:`MissingTunedValuesError` naming every such file and the command that writes
    them, so a study without its searches fails in one message rather than one per cell.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self._cache: dict[Path, dict[str, Any] | None] = {}
        self.problems: dict[Path, str] = {}
        self.dirnames: set[str] = set()

    def get(self, dataset: str, group: str, variant: str, protocol: str = TUNED
            ) -> dict[str, Any] | None:
        """The ``chosen.json`` of arm ``group/variant`` on ``dataset`` (``None``: unusable,
        recorded in :attr:`problems`)."""
        dirname = protocol_dirname(self.config, protocol)
        directory = search_directory(self.config, dataset, group, variant, dirname)
        if directory in self._cache:
            return self._cache[directory]
        chosen = read_chosen_file(directory)
        path = directory / CHOSEN_FILE
        if chosen is None:
            self.problems[path] = "missing"
        elif (chosen.get("dataset"), chosen.get("group"), chosen.get("variant")) != \
                (dataset, group, variant):
            self.problems[path] = (f"about {chosen.get('dataset')} {chosen.get('group')}/"
                                   f"{chosen.get('variant')}, not this search")
            chosen = None
        elif not chosen.get("complete", False):
            self.problems[path] = (f"incomplete: {chosen.get('n_trials')} of "
                                   f"{chosen.get('budget')} trials")
            chosen = None
        if chosen is None:
            self.dirnames.add(dirname)
        self._cache[directory] = chosen
        return chosen

    def raise_missing(self) -> None:
        """Raise :class:`MissingTunedValuesError` when any file asked for was unusable."""
        if not self.problems:
            return
        items = sorted(self.problems.items())
        shown = "; ".join(f"{_relative(self.config, p)} ({why})" for p, why in items[:4])
        more = f"; and {len(items) - 4} more" if len(items) > 4 else ""
        check = self.config.tuning.budget_check if self.config.tuning is not None else None
        commands = [tune_command(self.config)] if TUNING_DIRNAME in self.dirnames else []
        if check is not None and check.dirname in self.dirnames:
            commands.append(tune_command(self.config, budget_check=True))
        commands = list(dict.fromkeys(commands))
        raise MissingTunedValuesError(
            f"the tuned cells of study {self.config.name} read the tuned values of "
            f"{len(items)} search(es) that are not complete: {shown}{more}; run "
            f"{' and '.join(f'`{c}`' for c in commands)} first (docs/tuning.md), or commit "
            "the results/<study>/tuning/ of a finished search")


def check_chosen_matches(params: Mapping[str, Any], chosen: Mapping[str, Any],
                         tier: dict[str, Any] | None, where: str) -> None:
    """Raise :class:`StaleTunedValuesError` when ``params`` (a tuned cell before its seed,
    split and lr factor) are not the run ``chosen.json``'s search trained the choice for.

    Compared by run identity (:func:`dml_study.config.run_name` of both at
    the same seed, the search's validation keys left out), so result-neutral keys such as
    the data location or the device may differ.
    """
    recorded = chosen.get("train_parameters")
    if not isinstance(recorded, dict):
        return  # an older chosen.json: nothing to compare against
    ours = {k: v for k, v in params.items() if k not in VALIDATION_PARAMETERS}
    theirs = {k: v for k, v in recorded.items() if k not in VALIDATION_PARAMETERS}
    theirs["seed"] = ours["seed"] = 0
    for key in ("data_root",):  # where the data lives is not part of the search
        if key in ours:
            theirs[key] = ours[key]
        else:
            theirs.pop(key, None)
    if run_name(config_from_parameters(ours), tier) == \
            run_name(config_from_parameters(theirs), tier):
        return
    changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    raise StaleTunedValuesError(
        f"{where}: the search was tuned for other parameters than this tuned cell's (differing: "
        f"{', '.join(changed) or 'the resolved config'}): the study file changed since "
        "`tune` ran; restore it, or move the search directory away and tune it again")
