"""Every valid study file renders (#23.4): a study of degenerate cases, notebooks and pages.

One study holds every case at once, so the notebooks run once (about a minute on two idle
cores): the frozen headline group at one seed (claims with n = 1), a group whose arms lack
runs at some seeds, a group with no finished run, and a one-arm group that is also the
study's headline (baseline = treatment). The grid is the real frozen tier on generated
features (``degenerate_helpers``); runs are then removed, and the report is rendered from
what is left (``--collect``). Every page must render with no traceback, warning or machine
path (:func:`~dml_study.study.report.pagecheck.scan_study`) and say what is missing.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from degenerate_helpers import copy_notebooks, remove_runs, train_grid, write_degenerate_study
from fixture_datasets import write_cub_fixture

from dml_study.study.plan.config import load_study_config
from dml_study.study.report.pagecheck import scan_study, study_pages


def _text(page: Path) -> str:
    """A page's visible text, tags dropped and entities decoded (whitespace folded)."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(encoding="utf-8"), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory) -> tuple[object, Path]:
    import os

    from dml_study.study.pipeline.runner import run_study

    root = tmp_path_factory.mktemp("degenerate")
    previous = os.environ.get("DML_STUDY_CACHE")
    os.environ["DML_STUDY_CACHE"] = str(root / "cache")
    try:
        data = write_cub_fixture(root / "data", num_classes=8, images_per_class=6)
        copy_notebooks(root)
        config = load_study_config(write_degenerate_study(root, data))
        train_grid(config)
        remove_runs(config)
        run_study(config, progress=False, collect=True)
    finally:
        if previous is None:
            os.environ.pop("DML_STUDY_CACHE", None)
        else:
            os.environ["DML_STUDY_CACHE"] = previous
    return config, config.study_dir


@pytest.mark.slow
def test_every_page_of_a_degenerate_study_renders_cleanly(degenerate):
    _, study = degenerate
    names = [p.relative_to(study).as_posix() for p in study_pages(study)]
    assert names == ["index.html", "03_ablations.html", "04_proxy_analysis.html",
                     "05_results.html"]
    assert [str(p) for p in scan_study(study, min_figures=1)] == []
    summary = json.loads((study / "summary.json").read_text())
    assert [n["status"] for n in summary["notebooks"]] == ["ok"] * 3


@pytest.mark.slow
def test_claim_rows_say_what_is_missing(degenerate):
    config, study = degenerate
    rows = {r["name"]: r for r in json.loads((study / "claims.json").read_text())}
    assert set(rows) == {c.name for c in config.claims}  # a row for every claim, data or not
    assert rows["so_r1"]["seeds"] == 1 and rows["so_r1"]["note"] == "n = 1: no CI"
    assert rows["partial_r1"]["note"] == ("base: no finished run at seed(s) [2]; treat: no "
                                          "finished run at seed(s) [1]; n = 1: no CI")
    assert rows["empty_r1"]["effect"] is None and rows["empty_r1"]["seeds"] == 0
    assert rows["empty_r1"]["note"].endswith("no effect: no seed has a finished run in every arm")
    assert rows["single_motivation"]["note"] == "n = 1: no CI"
    index = _text(study / "index.html")
    # the scorecard cell of a one-seed row: its estimate, "n = 1: no CI" and the verdict
    for text in ("n = 1: no CI ○ inconclusive", "treat: no finished run at seed(s) [1]",
                 "no effect: no seed has a finished run in every arm"):
        assert text in index


@pytest.mark.slow
def test_notebook_pages_name_the_missing_runs_and_show_the_gallery(degenerate):
    _, study = degenerate
    ablations = _text(study / "03_ablations.html")
    assert "empty : no finished runs" in ablations  # the group without runs (tags dropped)
    # The headline cell lists what its rows lack.
    assert "SO improves retrieval (R@1) (cub200, frozen): n = 1: no CI" in ablations
    analysis = _text(study / "04_proxy_analysis.html")
    assert "Retrieval you can see" in analysis
    figures = [e["file"] for e in json.loads((study / "figures" / "index.json").read_text())]
    for name in ("retrieval_cub200", "class_changes_cub200", "headline"):
        assert f"figures/{name}.png" in figures and (study / "figures" / f"{name}.png").is_file()
    # The one-arm headline: one run, and the page says the other arm is the same.
    assert "only (%, mean ± std)" in _text(study / "index.html")
