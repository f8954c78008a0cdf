"""``kill -9`` of ``python -m dml_study.study`` during the grid and during the report (#23.6).

A tiny study (fake fine-tuned runs through the local launcher's worker processes, and
frozen-tier runs trained in the study process on generated features) is run as a real
process and killed with SIGKILL at four points: while the frozen tier trains in-process,
while fine-tuned workers train, and twice while the report's notebooks execute (before the
first report exists, and over a complete earlier report). After each kill the processes it
started must end by themselves (a worker finishes its run and releases its claim, a
notebook kernel notices its parent is gone), nothing may claim success that did not
succeed, and a plain re-run must finish with a complete, consistent report: ``claims.json``
equal to the scorecard recomputed from the run directories, every notebook in the index,
one training per run log, and no staging directory, temporary file or stale claim left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "study"))

from degenerate_helpers import (  # noqa: E402
    copy_notebooks,
    write_frozen_study,
    write_synthetic_features,
)
from fixture_datasets import write_cub_fixture  # noqa: E402
from study_helpers import write_fake_train_notebook  # noqa: E402

from dml_study.study.plan.config import load_study_config  # noqa: E402

pytestmark = pytest.mark.slow

NOTEBOOKS = ["03_ablations.ipynb", "05_results.ipynb"]


class Study:
    """``python -m dml_study.study --config STUDY`` as a process whose output is followed."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dml_study.study", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=path.parent.parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the reader drain
                if predicate(self.lines):
                    return
                raise AssertionError("the study ended before the kill point:\n"
                                     + "\n".join(self.lines[-30:]))
            if time.monotonic() > deadline:
                raise AssertionError("kill point not reached:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)

    def kill9(self) -> list[psutil.Process]:
        """SIGKILL the study process alone (as ``kill -9 PID``); its descendants."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=30)
        return children

    def finish(self, timeout: float = 1200) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code


def _count(pattern: str, at_least: int) -> Callable[[list[str]], bool]:
    regex = re.compile(pattern)
    return lambda lines: sum(bool(regex.search(line)) for line in lines) >= at_least


def _orphans_end(children: list[psutil.Process], timeout: float = 300) -> None:
    """The killed study's workers and kernels end by themselves."""
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for proc in alive:  # do not leave them behind whatever the outcome
        proc.kill()
    assert not alive, f"still running {timeout} s after the kill: {alive}"


def _leftovers(results: Path) -> list[str]:
    """Temporary files of interrupted atomic writes, anywhere under ``results``."""
    return sorted(str(p) for p in results.rglob("*.tmp"))


def _no_report(study: Path) -> None:
    """Nothing under ``study`` claims a report: only the grid's records (``runs/``,
    ``launch.json``: written while the grid trains) may exist before the first report."""
    from dml_study.study.pipeline.runner import KEPT_ON_REGENERATION

    if study.exists():
        names = {p.name for p in study.iterdir()}
        assert names <= set(KEPT_ON_REGENERATION), sorted(names)
        for name in ("claims.json", "summary.json", "index.html", "README.md"):
            assert not (study / name).exists(), name


def _consistent(config, results: Path) -> None:
    from dml_study.study.analysis.claims import scorecard
    from dml_study.study.launch.run_claims import live_claim
    from dml_study.study.plan.grid import expand_grid, is_finished

    study = config.study_dir
    assert not Path(f"{study}.staging").exists() and not Path(f"{study}.previous").exists()
    specs = expand_grid(config)
    assert all(is_finished(config.results_dir, s.run_name) for s in specs)
    assert all(live_claim(config.results_dir, s.run_name) is None for s in specs)
    claims = json.loads((study / "claims.json").read_text())
    assert claims == json.loads(json.dumps(scorecard(config))) and len(claims) >= 2
    summary = json.loads((study / "summary.json").read_text())
    assert [(n["notebook"], n["status"]) for n in summary["notebooks"]] == [
        (name, "ok") for name in NOTEBOOKS]
    index = (study / "index.html").read_text()
    assert all(f"href='{name.replace('.ipynb', '.html')}'" in index for name in NOTEBOOKS)
    for log in (study / "runs").glob("*.log"):
        assert log.read_text().count("trained in") == 1, log
    # Atomic writes interrupted by a kill leave `.*.tmp` files in run directories; a run
    # opened for training again removes them, a finished run is never reopened.
    stray = [p for p in _leftovers(results) if "/runs/" not in p]
    assert stray == [], stray


def test_kill_9_during_the_grid_and_the_report_then_rerun(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "DML_STUDY_DEBUG"},
           "DML_STUDY_CACHE": str(tmp_path / "cache")}
    os.environ["DML_STUDY_CACHE"] = env["DML_STUDY_CACHE"]  # for the synthetic features
    try:
        data = write_cub_fixture(tmp_path / "data", num_classes=8, images_per_class=6)
        copy_notebooks(tmp_path, NOTEBOOKS)
        write_fake_train_notebook(tmp_path / "notebooks" / "fake_train.ipynb")
        path = write_frozen_study(
            tmp_path, data, notebooks=NOTEBOOKS, train_notebook="fake_train.ipynb",
            groups=[
                {"name": "so_vs_none", "seeds": [0, 1, 2], "description": "fake fine-tuned",
                 "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
                {"name": "frozen_so", "tier": "frozen", "datasets": ["cub200"],
                 "seeds": list(range(8)), "description": "frozen",
                 "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
            ],
            headline={"group": "so_vs_none", "baseline": "no_so", "treatment": "so"},
            execution={"figure_dpi": 50, "stream_output": False, "max_parallel": 2,
                       "html": True},
            # one run after another, each announced: kill point 1 falls inside the tier
            # (the batched mode trains these 16 tiny runs in one step of 0.3 s)
            frozen={"views": 2, "train": {"epochs": 2, "batch_size": 8, "m_per_class": 2},
                    "datasets": {"cub200": {"embedding_dim": 8}},
                    "features": {"cub200": {"max_test_per_class": 5}},
                    "batch_mode": "sequential"},
        )
        config = load_study_config(path)
        write_synthetic_features(config)
    finally:
        os.environ.pop("DML_STUDY_CACHE", None)
    results = config.results_dir
    study = config.study_dir

    # 1. During the frozen tier (training in the study process itself).
    run = Study(path, env)
    run.wait_for(_count(r"trained \(frozen tier\)", 3))
    _orphans_end(run.kill9())
    _no_report(study)

    # 2. While fine-tuned runs train in worker processes: they finish their runs.
    run = Study(path, env)
    run.wait_for(_count(r"fine-tuned runs, \d+ already finished, [1-9]", 1))
    time.sleep(2)
    _orphans_end(run.kill9())
    _no_report(study)

    # 3. During the first report's notebooks: nothing is published.
    run = Study(path, env)
    run.wait_for(_count(r"\(1/2\) executing 03_ablations", 1))
    time.sleep(3)
    _orphans_end(run.kill9())
    _no_report(study)
    staging = Path(f"{study}.staging")
    assert not (staging / "summary.json").exists()  # the attempt claims no success

    run = Study(path, env)
    assert run.finish() == 0, "\n".join(run.lines[-40:])
    _consistent(config, results)
    report = {p.relative_to(study): p.read_bytes() for p in study.rglob("*") if p.is_file()}

    # 4. During a regeneration's notebooks, over a complete report: it stays as it was.
    run = Study(path, env)
    run.wait_for(_count(r"\(2/2\) executing 05_results", 1))
    time.sleep(2)
    _orphans_end(run.kill9())
    assert {p.relative_to(study): p.read_bytes() for p in study.rglob("*") if p.is_file()} \
        == report

    run = Study(path, env)
    assert run.finish() == 0, "\n".join(run.lines[-40:])
    _consistent(config, results)
