"""The rendered study as a reader sees it: every page opened in headless Chromium, offline.

A small study (two fake training runs and the real ``03_ablations`` notebook, from the
fixtures of ``tests/study/conftest.py``) is rendered from scratch, with a claims file and a
figure list like the ones ``05_results`` writes. Every page is then opened in Debian's
``chromium`` (driven by Playwright, no browser download) with every non-``file:`` request
aborted, and must show: every image loaded, every local link resolving, no console error,
no request leaving the machine, no traceback or warning box, no absolute path.
Screenshots of every page are saved under ``tests/browser/artifacts/`` (ignored by git).

Chromium is installed with apt-get when it is missing and the tests run as root (as in
CI); elsewhere the tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dml_study.study.report.pagecheck import browser_check, find_chromium, scan_study, study_pages

pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"


def _load_study_fixtures():
    spec = importlib.util.spec_from_file_location(
        "study_helpers", REPO / "tests" / "study" / "study_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chromium() -> str:
    found = find_chromium()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        found = find_chromium()
    if found is None:
        pytest.skip("no chromium on this machine and it cannot be installed here "
                    "(Debian: apt-get install chromium, as root)")
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


@pytest.fixture(scope="module")
def rendered_study(tmp_path_factory) -> Path:
    """A small study rendered from scratch: index, 03_ablations and two run pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dml_study.study.pipeline.runner import run_study
    from dml_study.study.plan.config import load_study_config

    fixtures = _load_study_fixtures()
    root = tmp_path_factory.mktemp("project")
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "03_ablations.ipynb", root / "notebooks")
    fixtures.write_fake_train_notebook(root / "notebooks" / "fake_train.ipynb")
    config = load_study_config(fixtures.write_study(root))
    study = config.study_dir
    (study / "figures").mkdir(parents=True)
    figure, axis = plt.subplots(figsize=(4, 3))
    axis.plot([0, 1], [50, 60], label="R@1")
    axis.set(title="fake headline", xlabel="arm", ylabel="R@1 (%)")
    axis.legend()
    figure.savefig(study / "figures" / "headline.png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    (study / "figures" / "index.json").write_text(json.dumps([
        {"file": "figures/headline.png", "title": "Headline", "caption": "fake"}]))
    (study / "claims.json").write_text(json.dumps([
        {"claim": "SO raises R@1", "paper": "SO", "dataset": "cub200", "regime": "C<d",
         "tier": "frozen", "metric": "R@1", "unit": "pp", "effect": 10.0, "ci_low": 9.0,
         "ci_high": 11.0, "seeds": 1, "verdict": "supported"}]))
    # only=: a partial run keeps what the study directory holds (the figure list and claims
    # written above); a full regeneration would start from the run records alone (#23).
    run_study(config, progress=False, only=["03_ablations.ipynb"])
    return study


@pytest.mark.slow
def test_fresh_study_files_hold_no_machine_path_warning_or_traceback(rendered_study):
    """The file scan, which needs no browser: paths, TqdmWarning, tracebacks, remote loads."""
    names = [p.relative_to(rendered_study).as_posix() for p in study_pages(rendered_study)]
    assert names[0] == "index.html" and "03_ablations.html" in names
    assert len([n for n in names if n.startswith("runs/")]) == 2
    assert [str(p) for p in scan_study(rendered_study, min_figures=1)] == []


@pytest.mark.slow
def test_every_page_of_a_fresh_study_passes_the_checks_in_chromium(rendered_study, chromium):
    pages = study_pages(rendered_study)
    shots = ARTIFACTS / "fresh_study"
    shutil.rmtree(shots, ignore_errors=True)
    assert [str(p) for p in browser_check(pages, screenshots=shots, executable=chromium)] == []
    assert len(list(shots.glob("*.png"))) == len(pages)


@pytest.mark.slow
def test_a_broken_image_or_a_remote_script_fails_the_check(rendered_study, chromium, tmp_path):
    index = (rendered_study / "index.html").read_text()
    broken = tmp_path / "broken_image.html"
    broken.write_text(index.replace("figures/headline.png", "figures/missing.png"))
    remote = tmp_path / "remote_script.html"
    remote.write_text(index.replace(
        "</head>", "<script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js'>"
                   "</script></head>"))
    shutil.copytree(rendered_study / "figures", tmp_path / "figures")
    problems = [str(p) for p in browser_check([broken, remote], executable=chromium)]
    assert any(p.startswith("broken_image.html: image did not load: figures/missing.png")
               for p in problems)
    assert any(p.startswith("remote_script.html: request leaving the machine: https://cdn.")
               for p in problems)
    assert any("remote_script.html: console error" in p for p in problems)
