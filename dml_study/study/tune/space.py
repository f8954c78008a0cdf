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
protocol applies a ``chosen.json``'s ``params`` with the same function; it lives in
:mod:`dml_study.study.plan.tuned` (the grid applies chosen values, and the plan imports
nothing after it) and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from dml_study.study.plan.config import SearchParam, search_key
from dml_study.study.plan.tuned import apply_values

__all__ = ["apply_values", "distribution", "distributions", "space_json", "suggest"]


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
