"""The scorecard in the project README, generated between markers from a ``claims.json``.

A README holds any number of blocks::

    <!-- scorecard:begin results/embedded/claims.json -->
    (generated: the scorecard of that file, its footnotes and a link to claims.csv)
    <!-- scorecard:end -->

The path after ``scorecard:begin`` is relative to the README's folder. :func:`update_readme`
rewrites every block (or the blocks of one claims file) from its file; the study's report
step calls :func:`update_project_readme` after a study is published, and
``python -m dml_study.study.report --readme`` does it by hand (``--check`` only reports blocks
that disagree with their file, exit status 1). The block is :class:`~.scorecard.Scorecard`'s
Markdown, so the README, the index and ``05_results`` show the same table.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dml_study.atomic_io import atomic_write_text
from dml_study.errors import EXIT_FAILED, EXIT_USAGE, UserFacingError
from dml_study.study.report.scorecard import Scorecard, legend

BEGIN = "<!-- scorecard:begin {source} -->"
END = "<!-- scorecard:end -->"
_BLOCK = re.compile(
    r"<!-- scorecard:begin (?P<source>\S+) -->\n(?P<body>.*?)<!-- scorecard:end -->", re.DOTALL)
#: The command that regenerates the blocks (named in each block).
COMMAND = "python -m dml_study.study.report --readme"


class ScorecardBlockError(UserFacingError):
    """A README scorecard block that cannot be generated (markers, missing claims file)."""

    exit_code = EXIT_USAGE


class ReadmeOutOfDate(UserFacingError):
    """``--check``: a README scorecard block disagrees with its ``claims.json``."""

    exit_code = EXIT_FAILED


def _load(path: Path, readme: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ScorecardBlockError(
            f"{readme}: its scorecard block names {path}, which does not exist; run the study "
            "(python -m dml_study.study --config STUDY) or fix the path after scorecard:begin")
    try:
        claims = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ScorecardBlockError(f"{path} is not valid JSON ({exc}); re-run 05_results") from exc
    if not isinstance(claims, list):
        raise ScorecardBlockError(f"{path} must hold a JSON list of claims")
    return claims


def block_body(claims: list[dict[str, Any]], source: str) -> str:
    """The generated Markdown of one block (between the markers), for ``source``'s claims.

    Links are relative to the README's folder, like ``source``.
    """
    csv_link = str(Path(source).with_name("claims.csv").as_posix())
    note = (f"<!-- generated from {source} by `{COMMAND}` (also run by the study's report "
            "step); edit the study, not this block -->")
    return "\n".join([note, "", legend(csv_link, hover=False), "",
                      Scorecard.from_claims(claims).to_markdown(), ""])


def _check_markers(text: str, readme: Path) -> None:
    begins = text.count("<!-- scorecard:begin ")
    if begins != text.count(END) or begins != len(_BLOCK.findall(text)):
        raise ScorecardBlockError(
            f"{readme}: unmatched scorecard markers ({begins} begin, {text.count(END)} end); "
            f"each block is '{BEGIN.format(source='results/<study>/claims.json')}' ... '{END}'")


def render_readme(text: str, readme: Path, only: Path | None = None) -> str:
    """``text`` (a README at ``readme``) with its scorecard blocks generated again.

    ``only`` (a claims file) limits the update to the blocks naming it.
    """
    _check_markers(text, readme)
    base = readme.parent

    def one(match: re.Match[str]) -> str:
        source = match["source"]
        path = base / source
        if only is not None and os.path.abspath(path) != os.path.abspath(only):
            return match.group(0)
        body = block_body(_load(path, readme), source)
        return f"{BEGIN.format(source=source)}\n{body}{END}"

    return _BLOCK.sub(one, text)


def block_sources(readme: str | Path) -> list[str]:
    """The claims files named by the README's blocks (relative to its folder)."""
    return [m["source"] for m in _BLOCK.finditer(Path(readme).read_text(encoding="utf-8"))]


def update_readme(readme: str | Path, only: str | Path | None = None) -> bool:
    """Generate the README's scorecard blocks again (atomically); True when it changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    new = render_readme(text, readme, Path(only) if only is not None else None)
    if new == text:
        return False
    atomic_write_text(readme, new)
    return True


def readme_problems(readme: str | Path) -> list[str]:
    """Blocks of the README that disagree with their ``claims.json`` (empty: up to date)."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    problems = []
    for match in _BLOCK.finditer(text):
        expected = block_body(_load(readme.parent / match["source"], readme), match["source"])
        if match["body"] != expected:
            problems.append(f"{readme}: the scorecard block of {match['source']} disagrees "
                            f"with that file; regenerate it with `{COMMAND}`")
    return problems


def update_project_readme(root: str | Path, claims: str | Path) -> bool:
    """After a study is published: update ``<root>/README.md``'s blocks naming ``claims``.

    Nothing happens when the project has no README or no block names that file (a smoke
    study in a temporary folder, a study the README does not show). True when it changed.
    """
    readme = Path(root) / "README.md"
    if not readme.is_file():
        return False
    targets = {os.path.abspath(readme.parent / s) for s in block_sources(readme)}
    if os.path.abspath(claims) not in targets:
        return False
    return update_readme(readme, only=claims)
