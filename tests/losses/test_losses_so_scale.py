"""The SO-vs-Proxy-Anchor scale table (README λ table): forms agree, floor is right."""

import pytest

from dml_study.losses.so_scale import benchmark_shape, markdown, measure


def test_benchmark_shapes_come_from_loaders_and_presets():
    assert benchmark_shape("cub200") == (100, 384, 180, 4)
    assert benchmark_shape("sop")[:2] == (11318, 384)
    with pytest.raises(ValueError, match="unknown benchmark 'icons'"):
        benchmark_shape("icons")


def test_cub_row_is_consistent():
    row = measure("cub200", lambda_sum=0.1, lambda_excess=1000.0)
    pairs = 100 * 99
    assert row.floor == 0.0
    assert row.so_mean == pytest.approx(row.so_sum / pairs)
    assert row.so_excess_mean == pytest.approx(row.so_mean)  # C <= d: no floor
    # Random unit vectors in R^d: E[cos²] = 1/d.
    assert row.so_mean == pytest.approx(1 / 384, rel=0.1)
    # λ_excess = 1000 on CUB is λ_sum = 1000 / C(C−1) ≈ 0.1: the same push as the old recipe.
    assert row.value_ratio_excess == pytest.approx(row.value_ratio_sum * 1000 / pairs / 0.1)
    assert row.grad_ratio_at_lambda_excess == pytest.approx(
        row.grad_ratio_at_lambda_sum * 1000 / pairs / 0.1
    )
    assert 1.0 < row.proxy_anchor < 100.0


def test_inshop_row_has_the_floor_and_a_small_excess():
    row = measure("inshop")
    c, d = 3997, 384
    assert row.floor == pytest.approx(c * c / d - c)
    assert row.so_sum > row.floor
    # Random proxies with C >> d are already close to a tight frame: E[excess] = C(1 − 1/d).
    assert row.so_sum - row.floor == pytest.approx(c * (1 - 1 / d), rel=0.1)
    table = markdown([row], 0.1, 1000.0)
    assert table.count("\n") == 2 and "| inshop | 3,997 | 384 |" in table
