"""``benchmarks/bench_frozen.py``'s float32 floor: the operations it counts for a run are the
hand-counted ones (so the "at most N×" it prints rests on a right count)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dml_study.config import load_config
from dml_study.study.tiers import frozen

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_frozen.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_frozen", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _features(classes: int, per_class: int, width: int) -> frozen.FrozenFeatures:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    views = rng.normal(size=(2, len(labels), width)).astype(np.float16)
    test = rng.normal(size=(len(labels), width)).astype(np.float16)
    return frozen.FrozenFeatures(
        train_views=views, train_eval=views[0], train_labels=labels, test=test,
        test_labels=labels, class_names=tuple(f"c{i}" for i in range(classes)), key="synthetic")


def test_the_floor_counts_every_product_of_a_step_and_an_evaluation(bench, tmp_path: Path):
    classes, per_class, width, dim, batch = 10, 6, 24, 8, 20
    features = _features(classes, per_class, width)
    config = load_config("icons", embedding_dim=dim, epochs=2, batch_size=batch, m_per_class=2,
                         results_dir=str(tmp_path), nmi=False, so_lambda=0.0)
    floor = bench.float32_floor([config, config], features, epochs=2, tmp=str(tmp_path))
    # Head forward x·Wᵀ and its weight gradient Gᵀ·x (the features get none): 2·B·F·d each;
    # cosines e·Pᵀ forward and their two gradients: 2·B·C·d each.
    step = 2 * (2 * batch * width * dim) + 3 * (2 * batch * classes * dim)
    assert floor["step_gflop"] * 1e9 == pytest.approx(step, rel=1e-12)
    test = classes * per_class
    evaluation = 2 * test * width * dim + 2 * test * test * dim
    assert floor["eval_gflop"] * 1e9 == pytest.approx(evaluation, rel=1e-12)
    steps = test // batch
    total = 2 * steps * step + 3 * evaluation
    assert floor["run_gflop"] * 1e9 == pytest.approx(total, rel=1e-12)
    assert floor["floor_s"] == pytest.approx(floor["run_gflop"] / floor["peak_gflops"])
