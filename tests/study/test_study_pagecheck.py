"""The page check of #24: strict HTML5 parse, tables read back against their data, and no
staging or absolute path in any page or notebook (metadata included)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from study_helpers import write_study

from dml_study.study.plan.config import STAGING_ENV, load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.report.index import StudyRecord, headline, render_study_pages, write_reports
from dml_study.study.report.markup import frame_table
from dml_study.study.report.pagecheck import (
    html_problems,
    notebook_metadata_problems,
    scan_study,
    scan_text,
    table_problems,
)
from dml_study.study.report.pages import notebook_page
from dml_study.study.report.paths import RESULTS_PLACEHOLDER, path_replacements, reader_path

REPO = Path(__file__).resolve().parents[2]

#: What 05_results showed (#24): the scorecard through a pandas Styler, regime unescaped.
SCORECARD = pd.DataFrame({"paper": ["SO", "SO"], "dataset": ["icons", "glyphs"],
                          "regime": ["C<d", "C>>d"], "verdict": ["supported", "supported"]})


def _page_with_output(data: dict) -> str:
    book = new_notebook()
    book.cells = [new_code_cell("table", outputs=[new_output("execute_result", data=data,
                                                             execution_count=1)])]
    return notebook_page(book, "05_results", back_link="index.html")


def test_the_styler_page_of_issue_24_fails_the_strict_parse():
    styled = SCORECARD.style.hide(axis="index")._repr_html_()
    page = _page_with_output({"text/html": styled, "text/plain": "<Styler>"})
    assert "C<d" in page  # the bug: the regime went into the page as markup
    problems = [str(p) for p in html_problems(page, "05_results.html")]
    assert "05_results.html: unknown element <d<> (text written unescaped?)" in problems
    assert any("HTML parse error" in p and "d<" in p for p in problems)


def test_a_hand_written_fixture_with_an_unescaped_regime_fails_too():
    page = ("<!DOCTYPE html>\n<html lang='en'><head><title>t</title></head><body><table>"
            "<tbody><tr><td>C<d</td><td>C>>d</td></tr></tbody></table></body></html>")
    problems = [p.what for p in html_problems(page, "p.html")]
    assert "unknown element <d<> (text written unescaped?)" in problems
    assert len(problems) >= 2


def test_the_same_table_through_the_escaping_path_is_clean():
    page = _page_with_output({"text/html": frame_table(SCORECARD)._repr_html_(),
                              "text/plain": "table"})
    assert "C&lt;d" in page and "C&gt;&gt;d" in page
    assert html_problems(page, "05_results.html") == []


# -------------------------------------------------------- tables against their data

R1 = {("no_so", 0): 0.50, ("no_so", 1): 0.52, ("no_so", 2): 0.54,
      ("so", 0): 0.55, ("so", 1): 0.56, ("so", 2): 0.60}
CLAIMS = [
    {"claim": "SO makes the proxies more orthogonal", "paper": "SO", "dataset": "cub200",
     "regime": "C<d", "tier": "frozen", "metric": "proxies/mean_abs_cos", "unit": "|cos|",
     "name": "so_cos", "effect": -0.2028962294002999, "ci_low": -0.20384424352188465,
     "ci_high": -0.20194821527871512, "seeds": 10, "verdict": "supported"},
    {"claim": "SO improves R@1", "paper": "SO", "dataset": "sop", "regime": "C>>d",
     "tier": "frozen", "metric": "R@1", "unit": "pp", "name": "so_r1", "effect": 4.52,
     "ci_low": 4.147152630998974, "ci_high": 4.892847369001027, "seeds": 10,
     "verdict": "supported", "epochs": {"no_so": 14, "so": 15},
     "epoch_selection": "validation"},
    {"claim": "SO improves R@1", "paper": "SO", "dataset": "cub200", "regime": "C<d",
     "tier": "frozen", "metric": "R@1", "unit": "pp", "name": "so_r1", "effect": -0.066,
     "ci_low": -0.29, "ci_high": 0.158, "seeds": 10, "verdict": "inconclusive"},
    {"claim": "Motivation", "paper": "SO", "dataset": "sop", "regime": "C>>d",
     "tier": "frozen", "metric": "spearman", "unit": "rho", "name": "so_motivation",
     "effect": 0.5, "ci_low": None, "ci_high": None, "seeds": 1, "verdict": "inconclusive"},
]


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """A rendered index with a scorecard (``C<d``, ``C>>d``, an n = 1 row) and a headline."""
    groups = [{"name": "so_vs_none", "seeds": [0, 1, 2],
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}]
    config = load_study_config(write_study(tmp_path, groups=groups))
    for spec in expand_grid(config):
        run = config.runs_dir / spec.run_name
        run.mkdir(parents=True)
        r1 = R1[(spec.variant, spec.seed)]
        (run / "metrics.json").write_text(json.dumps({"R@1": r1, "MAP@R": r1 / 2}))
    config.study_dir.mkdir(parents=True)
    (config.study_dir / "claims.json").write_text(json.dumps(CLAIMS))
    write_reports(config, StudyRecord(name="tiny", title="tiny", headline=headline(config)))
    return config.study_dir


def _tamper(study: Path, before: str, after: str, count: int = 1) -> list[str]:
    index = study / "index.html"
    text = index.read_text()
    assert text.count(before) >= count, before
    index.write_text(text.replace(before, after, count))
    return [str(p) for p in scan_study(study)]


def test_a_fresh_index_passes_parse_and_cell_checks(rendered: Path):
    assert [str(p) for p in scan_study(rendered)] == []
    assert "n = 1: no CI" in (rendered / "index.html").read_text()


def test_an_unescaped_regime_in_the_index_is_found_by_parse_and_cell_check(rendered: Path):
    problems = _tamper(rendered, "C&lt;d", "C<d", count=1)
    assert "index.html: unknown element <d<> (text written unescaped?)" in problems
    assert any("scorecard column" in p and "does not show 'C<d'" in p for p in problems)


@pytest.mark.parametrize(("before", "after", "message"), [
    ("<span class='estimate'>+4.52</span>", "<span class='estimate'>+4.62</span>",
     "effect +4.62 but claims.json has 4.52"),
    ("[−0.20384, −0.20195]", "[−0.20, −0.20]", "collapses to one number"),
    ("[+4.15, +4.89]", "[+4.15, +4.99]", "CI high +4.99 but claims.json has 4.89"),
    ("<span class='verdict'>✓ supported", "<span class='verdict'>○ inconclusive",
     "verdict 'inconclusive' but claims.json has 'supported'"),
    ("estimate-cell verdict-supported", "estimate-cell verdict-contradicted",
     "not as verdict-supported"),
    ("n = 1: no CI", "[+0.1, +0.9]", "shows an interval but claims.json has none"),
    ("epoch 14 (no_so), 15 (so)", "epoch 15 (no_so), 15 (so)",
     "says 'at validation-selected epoch 15 (no_so), 15 (so)' but claims.json's epochs give "
     "'at validation-selected epoch 14 (no_so), 15 (so)'"),
    ("<span class='epoch'>at validation-selected epoch 14 (no_so), 15 (so)</span>", "",
     "says 'no epoch' but claims.json's epochs give"),
    ("<td class='label text'", "<td class='label text' hidden", None),  # attributes: fine
    ("52.0 ± 2.0", "53.0 ± 2.0", "mean 53.0 but summary.json has 0.52"),
    ("<td>+5.0</td>", "<td>+6.0</td>", "+6.0 but summary.json has 0.05"),
])
def test_a_cell_that_disagrees_with_its_data_is_found(rendered: Path, before, after, message):
    problems = _tamper(rendered, before, after)
    if message is None:
        assert problems == []
    else:
        assert any(message in p for p in problems), problems


def test_a_missing_row_or_table_is_found(rendered: Path):
    text = (rendered / "index.html").read_text()
    start = text.index("<tr><td class='label text'")
    end = text.index("</tr>", start) + len("</tr>")
    (rendered / "index.html").write_text(text[:start] + text[end:])
    assert any("scorecard has 2 row(s), claims.json gives 3" in str(p)
               for p in table_problems(rendered))
    (rendered / "index.html").write_text(text.replace("class='scorecard'", "class='x'"))
    assert [str(p) for p in table_problems(rendered)] == [
        "index.html: no scorecard table (class 'scorecard') though claims.json exists"]


# ------------------------------------------------------------------ paths as read


def test_staging_and_absolute_paths_in_notebook_metadata_are_named(tmp_path: Path):
    book = new_notebook()
    book.metadata["papermill"] = {"output_path": "results/embedded.staging/05_results.ipynb",
                                  "input_path": "/home/alice/dml/notebooks/05_results.ipynb"}
    text = nbformat.writes(book)
    problems = [str(p) for p in notebook_metadata_problems(text, "05_results.ipynb")]
    assert problems == [
        "05_results.ipynb: metadata.papermill.input_path = '/home/alice/dml/notebooks/"
        "05_results.ipynb': name the published study directory relative to the project",
        "05_results.ipynb: metadata.papermill.output_path = 'results/embedded.staging/"
        "05_results.ipynb': name the published study directory relative to the project"]
    printed = scan_text("28 scorecard rows -> results/embedded.staging/claims.json", "nb")
    assert [p.what for p in printed] == [
        "names the staging directory: '28 scorecard rows -> results/embedded.staging/claims.json'"]
    assert scan_text("results/embedded/claims.json, results/embedded.stagingly", "nb") == []


def test_reader_path_names_the_published_directory_relative_to_the_project(tmp_path: Path):
    config = load_study_config(write_study(tmp_path))
    staging = config.results_dir / "tiny.staging"
    assert reader_path(config, staging / "claims.json") == "results/tiny/claims.json"
    assert reader_path(config, "results/tiny.staging/05_results.ipynb") == (
        "results/tiny/05_results.ipynb")
    assert reader_path(config, config.study_dir / "claims.json") == "results/tiny/claims.json"
    assert reader_path(config, tmp_path) == "."
    outside = load_study_config(write_study(tmp_path, results_dir=str(tmp_path.parent / "out")))
    claims = outside.results_dir / "tiny.staging" / "claims.json"
    assert reader_path(outside, claims) == f"{RESULTS_PLACEHOLDER}/tiny/claims.json"
    assert dict(path_replacements(outside))[str(outside.results_dir)] == RESULTS_PLACEHOLDER


def _executed(path: Path, config) -> None:
    """An executed notebook as papermill leaves it in the staging directory."""
    book = new_notebook()
    staging = config.results_dir / f"{config.name}.staging"
    book.metadata["papermill"] = {"output_path": str(staging / path.name),
                                  "input_path": "notebooks/05_results.ipynb"}
    book.cells = [new_code_cell("print(path)", outputs=[new_output(
        "stream", name="stdout", text=f"2 scorecard rows -> {staging}/claims.json\n")])]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)


@pytest.mark.parametrize("inside", [True, False], ids=["results-in-project", "results-outside"])
def test_published_pages_and_metadata_name_no_staging_and_no_absolute_path(tmp_path, inside,
                                                                           monkeypatch):
    results = "results" if inside else str(tmp_path.parent / f"{tmp_path.name}-out")
    config = load_study_config(write_study(tmp_path, results_dir=results))
    monkeypatch.setenv(STAGING_ENV, config.name)  # as while run_study executes the study
    assert config.study_dir.name == "tiny.staging"
    notebook = config.study_dir / "05_results.ipynb"
    _executed(notebook, config)
    render_study_pages(config, html=False, published=False)  # a failed attempt: keeps staging
    assert ".staging" in notebook.read_text()
    render_study_pages(config, html=True)
    text = notebook.read_text()
    where = "results/tiny" if inside else f"{RESULTS_PLACEHOLDER}/tiny"
    book = nbformat.read(notebook, as_version=4)
    assert book.metadata.papermill.output_path == f"{where}/05_results.ipynb"
    assert book.cells[0].outputs[0].text == f"2 scorecard rows -> {where}/claims.json\n"
    assert scan_text(text, "nb") == [] and notebook_metadata_problems(text, "nb") == []
    assert str(tmp_path) not in notebook.with_suffix(".html").read_text()
    os.environ.pop(STAGING_ENV)


def test_committed_pages_hold_no_staging_path():
    """Every committed page and notebook under ``results/`` (#24: ``05_results`` printed
    ``results/embedded.staging/claims.json``; the executed notebooks' metadata too)."""
    study = REPO / "results" / "embedded"
    if not (study / "index.html").is_file():
        pytest.skip("results/embedded is not committed in this checkout")
    problems = [str(p) for p in scan_study(study) if "staging" in p.what
                or "absolute" in p.what or "metadata" in p.what]
    assert problems == [], "regenerate results/embedded with `make study`"
