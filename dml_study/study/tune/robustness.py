"""The validation side of the lr-robustness claim, trained by ``tune`` (issue #19 part 5).

A group with ``lr_factors`` and ``tuned_from`` (``frozen_lr_grid`` in
``studies/embedded.yaml``) is an lr grid around the tuned values of another group's arms:
each arm's ``chosen.json`` with its lr multiplied by each factor. Its test cells are part of
the study's grid (``make study``); its validation cells — the same runs with ``split:
validation`` on each fold of ``tuning.validation.fold_ids``
(:func:`~dml_study.study.plan.grid.lr_grid_cells`) — are trained here, after the searches,
as soon as every arm the grid reads has a complete ``chosen.json``, under the test-split
guard like every trial (in-process runs: :func:`~dml_study.study.tune.guard.test_split_guard`;
fine-tuned workers: ``DML_STUDY_FORBID_TEST=1`` in their environment). Finished runs are
reused, so a re-run trains only what is missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, TextIO

from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import lr_grid_cells, unique_runs
from dml_study.study.tune.guard import FORBID_TEST_ENV, test_split_guard


@contextlib.contextmanager
def _forbid_test_env() -> Iterator[None]:
    """``DML_STUDY_FORBID_TEST=1`` for the worker processes started in the body."""
    previous = os.environ.get(FORBID_TEST_ENV)
    os.environ[FORBID_TEST_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORBID_TEST_ENV, None)
        else:
            os.environ[FORBID_TEST_ENV] = previous


def train_validation_grids(config: StudyConfig, launcher: Any = None, *,
                           stream: TextIO | None = None) -> list[str]:
    """Train the missing validation runs of every lr grid whose arms are tuned; one line per
    grid and dataset saying what was done (empty: no lr grid is ready)."""
    specs = unique_runs(lr_grid_cells(config, split="validation"))
    if not specs:
        return []
    from dml_study.study.launch.launcher import launch_grid

    with test_split_guard(), _forbid_test_env():
        report = launch_grid(config, launcher, specs, progress=stream is not None,
                             stream=stream)
    status = {r.run_name: r.status for r in report.results}
    lines = []
    for key in dict.fromkeys((s.group, s.dataset) for s in specs):
        runs = [s.run_name for s in specs if (s.group, s.dataset) == key]
        trained = sum(status.get(r) == "trained" for r in runs)
        lines.append(f"lr grid {key[0]} on {key[1]} (validation): {len(runs)} runs, "
                     f"{trained} trained, {len(runs) - trained} reused")
    return lines
