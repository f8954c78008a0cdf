"""The frozen tier's worker processes (``frozen.workers``): the same bits as one process.

The study's frozen runs are trained in batches; with ``workers`` > 1 the batches go to
spawned processes, one thread each. A run's arithmetic never mixes with another run's, so
its files must not depend on how many workers there were or which batch it was in.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from degenerate_helpers import write_frozen_study, write_synthetic_features
from fixture_datasets import write_cub_fixture

from dml_study.study.plan.config import StudyConfigError, load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.tiers.frozen_batched import BatchedRunsFailed, run_frozen_tier

TIMINGS = {"time_s", "train_time_s"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


REPO = Path(__file__).resolve().parents[2]


def _study(root: Path, data: Path, train: dict | None = None, **frozen):
    return load_study_config(write_frozen_study(
        root, data,
        groups=[{"name": "frozen_so", "tier": "frozen", "datasets": ["cub200"],
                 "seeds": [0, 1, 2], "description": "frozen",
                 "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}],
        frozen={"views": 2, "train": train or {"epochs": 2, "batch_size": 8, "m_per_class": 2},
                "datasets": {"cub200": {"embedding_dim": 8}},
                "features": {"cub200": {"max_test_per_class": 5}}, **frozen}))


@pytest.mark.slow
def test_two_workers_write_the_bits_of_one_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))  # spawned workers read it
    data = write_cub_fixture(tmp_path / "data", num_classes=8, images_per_class=6)
    one = _study(tmp_path / "one", data, workers=1, batch_runs=6)
    two = _study(tmp_path / "two", data, workers=2, batch_runs=2)  # 3 batches, 2 processes
    write_synthetic_features(one)
    logs = [io.StringIO(), io.StringIO()]
    outcomes = [run_frozen_tier(config, expand_grid(config), stream=log)
                for config, log in zip((one, two), logs, strict=True)]
    assert "worker processes" not in logs[0].getvalue()
    assert "frozen tier: 3 batches in 2 worker processes" in logs[1].getvalue()
    assert logs[1].getvalue().count("trained in one batch") == 3  # each batch announced
    assert all({o.status for o in runs} == {"trained"} for runs in outcomes)
    assert [o.run_name for o in outcomes[0]] == [o.run_name for o in outcomes[1]]
    for outcome in outcomes[0]:
        a, b = (c.results_dir / "runs" / outcome.run_name for c in (one, two))
        for name in ("proxies.npy", "proxies_init.npy", "train_class_recall.npy"):
            np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)
        for name in ("metrics.json", "history.json"):
            assert _strip(json.loads((a / name).read_text())) == \
                _strip(json.loads((b / name).read_text())), name
    # finished runs are reused, nothing is spawned for them
    assert {o.status for o in run_frozen_tier(two, expand_grid(two))} == {"reused"}


@pytest.mark.slow
def test_a_failed_batch_in_a_worker_is_raised_with_its_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    data = write_cub_fixture(tmp_path / "data", num_classes=8, images_per_class=6)
    root = tmp_path / "bad"
    config = load_study_config(write_frozen_study(
        root, data,
        groups=[{"name": "frozen_so", "tier": "frozen", "datasets": ["cub200"],
                 "seeds": [0, 1], "description": "frozen",
                 # alpha = 1e39 is infinite in float32: that arm's loss is inf at step 1
                 "variants": {"ok": {}, "bad": {"overrides": {"loss.params": {"alpha": 1e39}}}}}],
        frozen={"views": 2, "train": {"epochs": 2, "batch_size": 8, "m_per_class": 2},
                "datasets": {"cub200": {"embedding_dim": 8}},
                "features": {"cub200": {"max_test_per_class": 5}},
                "workers": 2, "batch_runs": 1},
        headline={"group": "frozen_so", "baseline": "ok", "treatment": "bad"}, claims=[]))
    write_synthetic_features(config)
    with pytest.raises(BatchedRunsFailed, match="non-finite loss") as err:
        run_frozen_tier(config, expand_grid(config))
    assert err.value.failures and all("non-finite" in m for m in err.value.failures.values())
    assert not any((config.results_dir / "runs" / name / "metrics.json").exists()
                   for name in err.value.failures)


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(StudyConfigError, match=r"frozen\.workers must be >= 1"):
        _study(tmp_path, tmp_path / "data", workers=0)


@pytest.mark.parametrize(("workers", "expected"), [(None, 3), (1, 1)])
def test_workers_default_to_the_local_launchers_parallel_runs(tmp_path, monkeypatch, workers,
                                                               expected):
    from dml_study.study.tiers import frozen_batched

    seen = []
    monkeypatch.setattr(frozen_batched, "train_frozen_runs_batched",
                        lambda *a, **kw: seen.append(kw["workers"]) or [])
    monkeypatch.setattr(frozen_batched, "frozen_run_config", lambda config, spec: None)
    path = write_frozen_study(tmp_path, tmp_path / "data", execution={"max_parallel": 3},
                              frozen={"workers": workers})
    config = load_study_config(path)
    run_frozen_tier(config, expand_grid(config))
    assert seen == [expected]


KILLED_STUDY = """
import sys
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.tiers.frozen_batched import run_frozen_tier
config = load_study_config(sys.argv[1])
run_frozen_tier(config, expand_grid(config), stream=sys.stdout)
"""


@pytest.mark.slow
def test_workers_end_when_the_study_is_killed_9(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    data = write_cub_fixture(tmp_path / "data", num_classes=8, images_per_class=6)
    config = _study(tmp_path / "k", data, workers=2, batch_runs=1,
                    train={"epochs": 200, "batch_size": 8, "m_per_class": 2})
    write_synthetic_features(config)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_STUDY, str(config.source)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    for line in proc.stdout:  # the pool is up once the parent says so
        if "worker processes" in line:
            break
    deadline = time.monotonic() + 120
    children: list = []
    while len(children) < 2 and time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.2)
    assert len(children) >= 2, children
    time.sleep(2)  # the workers are training a batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        child.kill()
    assert not alive, f"workers still running 30 s after the study was killed: {alive}"
    assert not any((config.results_dir / "runs").glob("*/metrics.json"))  # nothing finished
