"""Search spaces: the study file's entries as Optuna distributions, and trial parameters.

An arm's ``space`` (parsed and checked by :mod:`dml_study.study.plan.config` into
:class:`~dml_study.study.plan.config.SearchParam` entries) maps a key to a range:

=========================================  ==========================================
study file                                 Optuna distribution
=========================================  ==========================================
``{low: 1.0e-5, high: 1.0e-3, log: true}``  ``FloatDistribution(1e-5, 1e-3, log=True)``
``{low: 0.0, high: 0.5, step: 0.05}``       ``FloatDistribution(0.0, 0.5, step=0.05)``
``{low: 2, high: 8, int: true}``            ``IntDistribution(2, 8)`` (``step``, ``log`` too)
``{choices: [10, 100, 1000]}``              ``CategoricalDistribution((10, 100, 1000))``
=========================================  ==========================================

:func:`suggest` asks a trial for every key, in the file's order (TPE's independent sampler
draws them in that order, so the order is part of the seeded sequence). :func:`apply_values`
turns the suggested values into ``02_train`` parameters on top of an arm's own: a
``02_train`` parameter name (``lr``, ``so_lambda``) is set directly, any other config key
(``proxy_lr_mult``, ``optim.weight_decay``) goes into ``overrides``, and an entry of a mapping
(``loss.params.m_max``) is merged into that mapping in ``overrides``, so every other entry
of the variant's ``loss.params`` (its ``mapping``, its ``text_source``) is kept. The tuned
protocol applies a ``chosen.json``'s ``params`` with the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from dml_study.config import TRAIN_PARAMETERS, resolve_key
from dml_study.study.plan.config import DICT_CONFIG_FIELDS, SearchParam, search_key


def distribution(param: SearchParam) -> BaseDistribution:
    """The Optuna distribution of one search-space entry."""
    if param.choices is not None:
        return CategoricalDistribution(param.choices)
    if param.integer:
        return IntDistribution(int(param.low), int(param.high), log=param.log,
                               step=int(param.step or 1))
    return FloatDistribution(float(param.low), float(param.high), log=param.log,
                             step=None if param.step is None else float(param.step))


def distributions(space: Mapping[str, SearchParam]) -> dict[str, BaseDistribution]:
    """``{key: distribution}`` of a whole space, in its order."""
    return {key: distribution(param) for key, param in space.items()}


def suggest(trial: optuna.Trial, space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """Ask ``trial`` for every key of ``space`` (in order); the values by key.

    A trial enqueued with fixed values (a re-enqueued interrupted trial) gets those back.
    """
    values: dict[str, Any] = {}
    for key, param in space.items():
        if param.choices is not None:
            values[key] = trial.suggest_categorical(key, list(param.choices))
        elif param.integer:
            values[key] = trial.suggest_int(key, int(param.low), int(param.high),
                                            step=int(param.step or 1), log=param.log)
        else:
            values[key] = trial.suggest_float(key, float(param.low), float(param.high),
                                              step=param.step, log=param.log)
    return values


def space_json(space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """The space as written to ``space.json``: ``{key: {type, low, high, log[, step]}}`` or
    ``{key: {type: categorical, choices}}``, with the dotted key each name resolves to."""
    return {key: {**param.to_json(), "key": search_key(key)} for key, param in space.items()}


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
