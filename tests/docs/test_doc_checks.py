"""The project's docs: README.md and docs/*.md have working links and commands, and the README
stays short. Mirrors nothing in the package; the checkers are in ``doc_checks.py`` here.

Each checker is first fed a broken page (so a check that can never fail would be caught), then
run on the real docs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from doc_checks import (
    HelpCache,
    check_commands,
    check_links,
    code_lines,
    doc_files,
    github_slug,
    python_commands,
)

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250  # issue #22: "the README is <= 250 lines"


@pytest.fixture(scope="module")
def helps() -> HelpCache:
    """One ``--help`` cache for the module: each CLI's help is computed once."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return HelpCache(ROOT, env)


def _project(tmp_path: Path, readme: str, pages: dict[str, str]) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    for name, text in pages.items():
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    (tmp_path / "Makefile").write_text("study: install\n\techo\ninstall:\n\techo\n")
    return tmp_path


# --- links ---------------------------------------------------------------------------------

def test_github_slug_follows_githubs_rules() -> None:
    assert github_slug("The study") == "the-study"
    assert github_slug("One λ for every benchmark: `so_reduction: excess_mean`") == \
        "one-λ-for-every-benchmark-so_reduction-excess_mean"
    assert github_slug("Running on a cluster: launchers, SLURM (submitit), DDP (torchrun)") == \
        "running-on-a-cluster-launchers-slurm-submitit-ddp-torchrun"
    assert github_slug("GPUs and DDP (`torchrun`)") == "gpus-and-ddp-torchrun"
    assert github_slug("A [link](x.md) — here") == "a-link--here"


def test_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        "# Top\n\nSee [data](docs/data.md#the-cache), [gone](docs/gone.md), "
        "[bad anchor](docs/data.md#no-such-heading), [self](#top), [web](https://x.org/a.md).\n"
        "`[in code](docs/gone2.md)`\n\n```\n[in a block](docs/gone3.md)\n```\n",
        {"data.md": "# Data\n\n## The cache\n\n## The cache\n\n[up](../README.md#top) "
                    "[dup](#the-cache-1) [img](../missing.png)\n"},
    )
    problems = check_links(doc_files(root), root)
    assert len(problems) == 3, problems
    assert any("README.md:3" in p and "docs/gone.md" in p for p in problems)
    assert any("#no-such-heading" in p for p in problems)
    assert any("docs/data.md:7" in p and "missing.png" in p for p in problems)


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = check_links(doc_files(ROOT), ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


# --- commands ------------------------------------------------------------------------------

def test_commands_are_found_in_blocks_and_spans_but_not_in_output(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "Run `python -m dml_study.train --lr 1` now.\n\n"
        "```bash\n.venv/bin/python -m dml_study.study --config a.yaml \\\n  --quiet  # --no\n"
        "torchrun --nproc_per_node=4 -m dml_study.train --dataset sop\n```\n\n"
        "```text\npython -m dml_study.train --output-only\n```\n\n"
        "    DML_DATA_ROOT=/d python -m dml_study.data.icons build [--size 64]\n",
        encoding="utf-8",
    )
    found = [(c.module, c.args) for line in code_lines(page) for c in python_commands(line)]
    assert sorted(found) == sorted([
        ("dml_study.study", ("--config", "a.yaml", "--quiet")),
        ("dml_study.train", ("--dataset", "sop")),
        ("dml_study.data.icons", ("build", "--size", "64")),
        ("dml_study.train", ("--lr", "1")),
    ])


def test_command_check_finds_unknown_modules_flags_and_targets(
    tmp_path: Path, helps: HelpCache
) -> None:
    root = _project(
        tmp_path,
        "```bash\nmake study\nmake tset\npython -m dml_study.train --so_lambda 0.1 --so_lamda 1\n"
        "python -m dml_study.no_such_module --x\n"
        "python -m dml_study.data download cub200 --root data --no-such-flag\n"
        "python -m dml_study.train --optim.proxy_lr_mult 10 --optim.nope 1\n```\n",
        {},
    )
    helps.root = ROOT  # the modules are the project's; the pages are the fixture's
    problems = check_commands(doc_files(root), root, helps)
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "`make tset`: no such target" in text
    assert "option --so_lamda is not in its --help" in text
    assert "dml_study.no_such_module" in text and "exited 1" in text
    assert "option --no-such-flag" in text  # checked against `download --help`
    assert "option --optim.nope" in text and "--optim.proxy_lr_mult" not in text


def test_every_documented_command_names_a_real_module_flag_and_target(helps: HelpCache) -> None:
    problems = check_commands(doc_files(ROOT), ROOT, helps)
    assert not problems, "doc commands that would fail:\n" + "\n".join(problems)


# --- README --------------------------------------------------------------------------------

def test_readme_is_at_most_250_lines() -> None:
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (limit {README_MAX_LINES}): move a section into docs/ "
        "and link it from the README's documentation table")


def test_docs_index_lists_every_docs_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if p.name != "README.md" and f"]({p.name})" not in index]
    assert not missing, f"docs/README.md does not list {missing}: add one line for each"
