"""#24 end to end: a small study with claims, run through ``run_study`` with the real
``05_results``, reads as the data say.

The study (fake training runs, ``tests/study/study_helpers.py``) has three claims: R@1 and
mean |cos| over three seeds, and R@1 of a one-seed group at d = 4 < C = 6 classes (so one
cell has no CI, the regimes ``C<d``/``C>d`` both appear, and the two R@1 claims share a
row with a column per proxy shape). After the study is published:
no page has an HTML parse error, the scorecard on the index and in ``05_results`` and the
headline agree cell by cell with ``claims.json``/``summary.json``, nothing names the
staging directory or an absolute path, ``claims.csv`` sits beside ``claims.json``, and the
project README's scorecard block was regenerated. The pages are opened in Chromium and
screenshotted (``tests/browser/artifacts/scorecard/``) when a Chromium is installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from dml_study.study.report.pagecheck import browser_check, find_chromium, scan_study
from dml_study.study.report.readme import readme_problems
from dml_study.study.report.scorecard import epoch_text

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts" / "scorecard"

CLAIMS = [
    {"name": "so_r1", "claim": "SO improves R@1", "paper": "SO", "group": "so_vs_none",
     "baseline": "no_so", "treatment": "so", "metric": "R@1"},
    {"name": "so_cos", "claim": "SO makes the proxies more orthogonal", "paper": "SO",
     "group": "so_vs_none", "baseline": "no_so", "treatment": "so",
     "metric": "proxies/mean_abs_cos", "direction": "decrease", "scale": 1.0, "unit": "|cos|"},
    {"name": "so_r1_small", "claim": "SO improves R@1 at d = 4", "paper": "SO",
     "group": "one_seed", "baseline": "no_so", "treatment": "so", "metric": "R@1"},
]


def _helpers():
    spec = importlib.util.spec_from_file_location(
        "study_helpers", REPO / "tests" / "study" / "study_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    from dml_study.study.launch.launcher import launch_grid
    from dml_study.study.pipeline.runner import run_study
    from dml_study.study.plan.config import load_study_config

    helpers = _helpers()
    root = tmp_path_factory.mktemp("project")
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "05_results.ipynb", root / "notebooks")
    helpers.write_fake_train_notebook(root / "notebooks" / "fake_train.ipynb")
    groups = [
        {"name": "so_vs_none", "seeds": [0, 1, 2],
         "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
        {"name": "one_seed", "seeds": [0], "base": {"embedding_dim": 4},
         "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
    ]
    config = load_study_config(helpers.write_study(
        root, notebooks=["05_results.ipynb"], groups=groups, claims=CLAIMS))
    (root / "README.md").write_text("# project\n\n<!-- scorecard:begin results/tiny/claims.json"
                                    " -->\nold\n<!-- scorecard:end -->\n")
    launch_grid(config, progress=False)  # 05_results reads the runs; 03_ablations would train
    run_study(config, progress=False)
    return config.study_dir


@pytest.mark.slow
def test_the_published_study_reads_as_its_data(published: Path):
    assert published.name == "tiny" and not published.with_name("tiny.staging").exists()
    claims = json.loads((published / "claims.json").read_text())
    assert {c["name"] for c in claims} == {"so_r1", "so_cos", "so_r1_small"}
    small = next(c for c in claims if c["name"] == "so_r1_small")
    assert small["seeds"] == 1 and small["ci_low"] is None and small["regime"] == "C>d"
    # Parse, cell-by-cell tables (index and 05_results), no staging/absolute path anywhere.
    assert [str(p) for p in scan_study(published)] == []
    page = (published / "05_results.html").read_text()
    assert re.search(r"class=[\"']scorecard[\"']", page) and "n = 1: no CI" in page
    assert "C&lt;d" in page and "C&gt;d" in page
    executed = nbformat.read(published / "05_results.ipynb", as_version=4)
    assert executed.metadata.papermill.output_path == "results/tiny/05_results.ipynb"
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "3 scorecard rows -> results/tiny/claims.json" in printed
    assert (published / "claims.csv").read_text().startswith("name,claim,paper,dataset,")
    readme = published.parents[1] / "README.md"
    text = readme.read_text()
    # so_r1 and so_r1_small compare the same arms: one row, a column per proxy shape.
    assert ("| claim | paper | unit | cub200 · fine-tuned · C\\<d · C = 6, d = 8 | "
            "cub200 · fine-tuned · C>d · C = 6, d = 4 |") in text
    big = next(c for c in claims if c["name"] == "so_r1")
    assert epoch_text(big) == epoch_text(small) == f"at epoch {big['epochs']['so']} (final)"
    assert (f"| so_r1 | SO | pp | +10.0 [+10.0, +10.0] ✓ supported {epoch_text(big)} | "
            f"+10.0 n = 1: no CI ○ inconclusive {epoch_text(small)} |") in text
    assert readme_problems(readme) == []


@pytest.mark.slow
def test_the_scorecard_pages_pass_in_chromium(published: Path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    pages = [published / "index.html", published / "05_results.html"]
    assert [str(p) for p in browser_check(pages, screenshots=ARTIFACTS,
                                          executable=executable)] == []
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == ["05_results.html.png",
                                                               "index.html.png"]
