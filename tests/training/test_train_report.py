"""Notebook helpers: tables and figures from a finished tiny run."""

from __future__ import annotations

import numpy as np
import pytest

from dml_study.training import report


def test_run_or_load_trains_once_then_loads(tiny_config):
    cfg = tiny_config(run_name="rep", epochs=2, so_lambda=0.05)
    first = report.run_or_load(cfg)
    assert first.trained_now
    second = report.run_or_load(cfg)
    assert not second.trained_now and second.metrics == first.metrics

    table = report.metrics_table(first.metrics)
    # a test run's best epoch is chosen on the test split, and the table says so
    assert list(table.columns) == ["untrained", "final", "best (test-selected)", "gain"]
    assert table.loc["R@1", "best (test-selected)"] == pytest.approx(
        100 * first.metrics["best_test_selected"]["R@1"], abs=0.01)
    validation = {**first.metrics, "split": "validation", "best": {"epoch": 1, "R@1": 0.5}}
    assert report.metrics_table(validation).loc["R@1", "best (validation)"] == 50.0
    assert table.loc["R@1", "final"] == pytest.approx(100 * first.metrics["R@1"], abs=0.01)
    assert table.loc["MAP@R", "gain"] == pytest.approx(
        100 * (first.metrics["MAP@R"] - first.metrics["untrained"]["MAP@R"]), abs=0.02
    )
    assert report.config_table(cfg).loc["loss.so_lambda", "value"] == 0.05

    curves = report.plot_training_curves(first.history)
    assert len(curves.axes) == 5  # 2x2 panels + the twin axis of the SO panel
    so_line = curves.axes[1].lines[0]
    assert np.allclose(so_line.get_ydata(), [h["so"] for h in first.history[1:]])
    heat = report.plot_proxy_similarity(first.run_dir)
    assert len(heat.axes) >= 2
    from dml_study.study.analysis.per_class import cosine_matrix

    trained = cosine_matrix(np.load(first.run_dir.proxies)[:40])
    assert np.array_equal(heat.axes[1].collections[0].get_array().reshape(trained.shape), trained)
    summary = report.summary(first)
    assert summary["final"]["R@1"] == first.metrics["R@1"]
    assert summary["split"] == "test"
    assert summary["best_epoch"] == first.metrics["best_test_selected"]["epoch"]
    assert summary["untrained"]["R@1"] == first.metrics["untrained"]["R@1"]


def test_sample_batch_is_the_trainers_first_batch(tiny_config):
    cfg = tiny_config(run_name="batch")
    images, names = report.sample_batch(cfg, max_images=8)
    assert images.shape == (8, 3, 32, 32)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0  # not normalised
    assert names[:4] == [names[0]] * 4  # m_per_class = 4 images of one class first
    again, _ = report.sample_batch(cfg, max_images=8)
    assert np.array_equal(images.numpy(), again.numpy())  # seeded augmentation
    fig = report.plot_sample_batch(cfg, max_images=8)
    assert fig.axes
