"""``EvaluationResult``: flat keys, lookup, JSON round trip."""

import json

import numpy as np
import pytest

from dml_study.evaluation import EvaluationResult, evaluate


def _result(nmi=0.5):
    return EvaluationResult(
        recall={8: 0.9, 1: 0.5, 2: 0.7},
        map_at_r=0.25,
        r_precision=0.3,
        nmi=nmi,
        num_queries=10,
        excluded_queries=2,
    )


def test_to_dict_has_flat_keys_in_order_and_is_json_serialisable():
    d = _result().to_dict()
    assert list(d) == ["R@1", "R@2", "R@8", "MAP@R", "RP", "NMI"]
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) is float for v in d.values())


def test_nmi_key_absent_when_not_computed():
    assert "NMI" not in _result(nmi=None).to_dict()
    assert "NMI" not in _result(nmi=None)


def test_getitem_matches_to_dict_and_names_valid_keys_on_error():
    r = _result()
    for key, value in r.to_dict().items():
        assert r[key] == value
    with pytest.raises(KeyError, match=r"R@4.*valid keys: R@1, R@2, R@8, MAP@R, RP, NMI"):
        r["R@4"]


def test_to_dict_returns_a_copy():
    r = _result()
    r.to_dict()["R@1"] = 0.0
    assert r["R@1"] == 0.5


def test_summary_in_percent():
    assert _result().summary().startswith("R@1 50.00 | R@2 70.00 | R@8 90.00 | MAP@R 25.00")


def test_evaluate_result_values_are_plain_floats_in_unit_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 50)
    x = np.eye(5)[y] + rng.standard_normal((50, 5))
    r = evaluate(x, y, ks=(1, 2), nmi=True)
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()
    assert all(0.0 <= v <= 1.0 for v in r.to_dict().values())
    assert (r.num_queries, r.excluded_queries) == (50, 0)
