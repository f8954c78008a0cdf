"""Search spaces: study-file entries -> checked SearchParam -> Optuna distributions -> values."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from dml_study.config import config_from_parameters
from dml_study.study.plan.config import (
    SearchParam,
    StudyConfigError,
    _build_search_param,
    search_key,
)
from dml_study.study.tune.space import apply_values, distribution, space_json, suggest


@pytest.mark.parametrize(("raw", "expected"), [
    ({"low": 1e-5, "high": 1e-3, "log": True}, FloatDistribution(1e-5, 1e-3, log=True)),
    ({"low": 0.0, "high": 0.5, "step": 0.05}, FloatDistribution(0.0, 0.5, step=0.05)),
    ({"low": 2, "high": 8, "int": True}, IntDistribution(2, 8)),
    ({"low": 2, "high": 8, "int": True, "step": 2}, IntDistribution(2, 8, step=2)),
    ({"low": "1e-5", "high": 1.0e-3, "log": True}, FloatDistribution(1e-5, 1e-3, log=True)),
    ({"choices": [10, 100, 1000]}, CategoricalDistribution((10, 100, 1000))),
])
def test_entries_become_optuna_distributions(raw, expected):
    assert distribution(_build_search_param(raw, "x")) == expected


@pytest.mark.parametrize(("raw", "message"), [
    ({"low": 1.0, "hihg": 2.0}, r"unknown key\(s\) 'hihg'.*did you mean 'high'"),
    ({"low": 1.0}, r"missing 'high'"),
    ({"low": 2.0, "high": 1.0}, r"need low < high"),
    ({"low": 0.0, "high": 1.0, "log": True}, r"log range needs low > 0"),
    ({"low": 1e-3, "high": 1.0, "log": True, "step": 0.1}, r"exclude each other"),
    ({"low": 0.5, "high": 3, "int": True}, r"expected an integer"),
    ({"choices": []}, r"non-empty list"),
    ({"choices": [1, 1]}, r"duplicate"),
    ({"choices": [1, 2], "low": 0}, r"stands alone"),
    ([1, 2], r"expected \{low, high"),
])
def test_bad_entries_name_the_key_and_the_fix(raw, message):
    with pytest.raises(StudyConfigError, match=message):
        _build_search_param(raw, "tuning.arms[0].space.lr")


@pytest.mark.parametrize(("key", "dotted"), [
    ("lr", "optim.lr"), ("optim.lr", "optim.lr"), ("so_lambda", "loss.so_lambda"),
    ("proxy_lr_mult", "optim.proxy_lr_mult"), ("loss.params.m_max", "loss.params.m_max"),
])
def test_search_keys_resolve_to_dotted_config_keys(key, dotted):
    assert search_key(key) == dotted


@pytest.mark.parametrize(("key", "message"), [
    ("epochs", r"not searched: every trial trains the arm's epochs"),
    ("seed", r"not searched"),
    ("dataset", r"not searched"),
    ("device", r"not searched"),
    ("proxy_lr_mul", r"Did you mean proxy_lr_mult"),
    ("optim.lr.x", r"only the mappings"),
    ("loss.params", r"is a mapping"),
])
def test_unsearchable_and_unknown_keys_are_refused(key, message):
    with pytest.raises(StudyConfigError, match=message):
        search_key(key)


def test_suggest_draws_every_key_in_file_order_and_returns_enqueued_values():
    space = {"lr": SearchParam(low=1e-4, high=1e-2, log=True),
             "m": SearchParam(low=0.0, high=0.5, step=0.05),
             "k": SearchParam(low=1, high=4, integer=True),
             "c": SearchParam(choices=(10, 100))}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = suggest(study.ask(), space)
    assert list(values) == ["lr", "m", "k", "c"]
    assert 1e-4 <= values["lr"] <= 1e-2 and values["c"] in (10, 100)
    assert values["m"] == pytest.approx(round(values["m"] / 0.05) * 0.05)
    study.enqueue_trial({"lr": 5e-3, "m": 0.1, "k": 2, "c": 100})
    assert suggest(study.ask(), space) == {"lr": 5e-3, "m": 0.1, "k": 2, "c": 100}


def test_apply_values_sets_train_parameters_overrides_and_mapping_entries():
    variant = {"dataset": "icons", "loss": "adaptive_margin", "lr": 1e-3,
               "overrides": {"loss.params": {"mapping": "matched_constant", "text_source":
                                             "glove"}, "optim.head_lr_mult": 3.0}}
    out = apply_values(variant, {"lr": 2e-4, "head_lr_mult": 8.0, "proxy_lr_mult": 42.0,
                                 "loss.params.m_max": 0.3, "loss.params.mapping": "constant"})
    assert out["lr"] == 2e-4
    assert out["overrides"] == {
        "loss.params": {"mapping": "constant", "text_source": "glove", "m_max": 0.3},
        "head_lr_mult": 8.0, "proxy_lr_mult": 42.0,  # the other spelling is replaced
    }
    assert variant["overrides"]["loss.params"]["mapping"] == "matched_constant"  # unchanged
    config = config_from_parameters(apply_values({"dataset": "icons"}, {
        "lr": 2e-4, "optim.proxy_lr_mult": 42.0, "so_lambda": 0.3}))
    assert (config.optim.lr, config.optim.proxy_lr_mult, config.loss.so_lambda) == \
        (2e-4, 42.0, 0.3)


def test_space_json_records_type_range_and_dotted_key():
    out = space_json({"lr": SearchParam(low=1e-4, high=1e-2, log=True),
                      "proxy_lr_mult": SearchParam(choices=(10, 100))})
    assert out == {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                          "key": "optim.lr"},
                   "proxy_lr_mult": {"type": "categorical", "choices": [10, 100],
                                     "key": "optim.proxy_lr_mult"}}
