"""Checks of a rendered study as a reader gets it: the files, and the pages in a real browser.

:func:`scan_study` reads every text file of ``results/<study>/`` and reports absolute
machine paths, ``TqdmWarning`` boxes, tracebacks, remote scripts/stylesheets/fonts, executed
notebooks without a rendered page and too few figures on the index. :func:`browser_check`
opens pages in headless Chromium (through Playwright, pointed at the system's
``chromium``; no browser download) with every non-``file:`` request aborted, and reports
requests that tried to leave the machine, images that did not load, local links that do
not resolve, console errors, warning (stderr) boxes, tracebacks and absolute paths in the
visible text; it can save a full-page screenshot of each page.

Command line (exit status 1 when a problem is found)::

    python -m dml_study.study.report.pagecheck results/embedded --min-figures 3 \\
        --browser --screenshots /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from dml_study.study.plan.config import STAGING_SUFFIX
from dml_study.study.report import scorecard as scorecards
from dml_study.study.tiers.machine_paths import find_machine_paths

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Route

#: Text files of a study directory that are scanned.
TEXT_SUFFIXES = (".html", ".ipynb", ".md", ".json", ".csv", ".txt", ".yaml", ".yml", ".log")
#: Words that mean a page shows a failure or a warning box.
BAD_WORDS = ("Traceback", "TqdmWarning")
_REMOTE = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*['\"]?(?:https?:)?//"
    r"|<link\b[^>]*\bhref\s*=\s*['\"]?(?:https?:)?//"
    r"|@import\s+(?:url\()?['\"]?(?:https?:)?//"
    r"|url\(\s*['\"]?(?:https?:)?//",
    re.IGNORECASE,
)
#: A path into a study's staging directory (``results/embedded.staging/...``).
_STAGING = re.compile(r"[\w-]" + re.escape(STAGING_SUFFIX) + r"(?![\w-])")
#: Pages that must show the scorecard when the study has a ``claims.json``.
SCORECARD_PAGES = ("index.html", "05_results.html")
#: Elements of HTML (WHATWG living standard); anything else on a page is an error, e.g.
#: ``<d<`` from an unescaped ``C<d``. MathML and SVG elements are recognised by namespace.
HTML_ELEMENTS = frozenset("""
a abbr address area article aside audio b base bdi bdo blockquote body br button canvas
caption cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed
fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html i
iframe img input ins kbd label legend li link main map mark menu meta meter nav noscript
object ol optgroup option output p picture pre progress q rp rt ruby s samp script search
section select slot small source span strong style sub summary sup table tbody td template
textarea tfoot th thead time title tr track u ul var video wbr
""".split())
_FOREIGN = ("{http://www.w3.org/1998/Math/MathML}", "{http://www.w3.org/2000/svg}")
#: Parse errors listed per page (the rest are counted).
MAX_PARSE_ERRORS = 5
#: Chromium flags for a quiet, offline, reproducible headless browser.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file or page."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def scan_text(text: str, where: str) -> list[Problem]:
    """Problems in the text of one file (machine paths, staging paths, bad words, remote
    resources)."""
    problems = [Problem(where, f"absolute machine path {p!r}") for p in find_machine_paths(text)]
    problems += [Problem(where, f"names the staging directory: {_context(text, m)!r}")
                 for m in _STAGING.finditer(text)]
    problems += [Problem(where, f"contains {word!r}") for word in BAD_WORDS if word in text]
    problems += [Problem(where, f"loads from the network: {m.group(0)!r}")
                 for m in _REMOTE.finditer(text)]
    return problems


def _context(text: str, match: re.Match[str], width: int = 40) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    start = max(start, match.start() - width)
    end = text.find("\n", match.end())
    end = min(end if end >= 0 else len(text), match.end() + width)
    return text[start:end].strip()


def notebook_metadata_problems(text: str, where: str) -> list[Problem]:
    """Absolute or staging paths in an executed notebook's metadata (papermill's
    ``input_path``/``output_path``/``parameters``, ...), each named by its key."""
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Problem(where, f"not a valid notebook ({exc})")]
    problems = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and (find_machine_paths(node) or _STAGING.search(node)):
            problems.append(Problem(where, f"{key} = {node!r}: name the published study "
                                           "directory relative to the project"))

    walk(notebook.get("metadata", {}) if isinstance(notebook, dict) else {}, "metadata")
    return problems


def scan_study(study_dir: str | Path, min_figures: int = 0) -> list[Problem]:
    """Problems with the files of a rendered study directory (see the module docstring)."""
    study_dir = Path(study_dir)
    if not (study_dir / "index.html").is_file():
        return [Problem(str(study_dir), "no index.html; run the study first")]
    problems: list[Problem] = []
    for path in sorted(study_dir.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            where = str(path.relative_to(study_dir))
            problems += scan_text(text, where)
            if path.suffix == ".ipynb":
                problems += notebook_metadata_problems(text, where)
            if path.suffix == ".html":
                problems += html_problems(text, where)
    problems += table_problems(study_dir)
    for notebook in sorted(study_dir.glob("runs/*.ipynb")):
        if not notebook.with_suffix(".html").is_file():
            problems.append(Problem(str(notebook.relative_to(study_dir)), "no rendered .html"))
    figures = index_figures(study_dir / "index.html")
    if len(figures) < min_figures:
        problems.append(Problem("index.html", f"{len(figures)} figure(s), expected at least "
                                              f"{min_figures}"))
    return problems


# ------------------------------------------------------------------ strict HTML parse


def parse_html(text: str, fragment: bool = False
               ) -> tuple[Any, list[tuple[tuple[int, int], str, dict]]]:
    """``text`` parsed by html5lib (the HTML5 algorithm browsers use): the element tree
    (HTML elements without a namespace) and the parse errors ``((line, col), code, vars)``.
    ``fragment``: ``text`` is the content of a ``<div>`` (a table), not a whole page."""
    import html5lib

    parser = html5lib.HTMLParser(tree=html5lib.getTreeBuilder("etree"),
                                 namespaceHTMLElements=False)
    tree = parser.parseFragment(text, container="div") if fragment else parser.parse(text)
    return tree, list(parser.errors)


def _error_message(code: str, variables: dict) -> str:
    from html5lib.constants import E

    try:
        return E.get(code, code) % (variables or {})
    except (TypeError, KeyError, ValueError):
        return code


def html_problems(text: str, where: str, fragment: bool = False) -> list[Problem]:
    """Parse errors and elements HTML does not define, as the strict HTML5 parser sees the
    page (an unescaped ``C<d`` in a cell shows as element ``d<`` and four errors);
    ``fragment`` checks a piece of a page (e.g. one table)."""
    tree, errors = parse_html(text, fragment)
    lines = text.splitlines()
    problems = []
    for (line, col), code, variables in errors[:MAX_PARSE_ERRORS]:
        source = lines[line - 1][max(0, col - 40):col + 20] if 0 < line <= len(lines) else ""
        problems.append(Problem(where, f"HTML parse error at {line}:{col}: "
                                       f"{_error_message(code, variables)} near {source!r}"))
    if len(errors) > MAX_PARSE_ERRORS:
        problems.append(Problem(where, f"... and {len(errors) - MAX_PARSE_ERRORS} more HTML "
                                       "parse error(s)"))
    unknown = sorted({element.tag for element in tree.iter() if element is not tree
                      and isinstance(element.tag, str) and element.tag not in HTML_ELEMENTS
                      and not element.tag.startswith(_FOREIGN)})
    problems += [Problem(where, f"unknown element <{tag}> (text written unescaped?)")
                 for tag in unknown]
    return problems


_BLOCK_TAGS = frozenset({"br", "p", "div", "li", "dt", "dd", "tr", "span"})


def element_text(element: Any) -> str:
    """The text of an element as a reader reads it: whitespace collapsed, a space for each
    line break and between spans."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        tag = node.tag if isinstance(node.tag, str) else ""
        if tag in _BLOCK_TAGS:
            parts.append(" ")
        if node.text and tag:
            parts.append(node.text)
        for child in node:
            walk(child)
            if child.tail:
                parts.append(child.tail)
        if tag in _BLOCK_TAGS:
            parts.append(" ")

    walk(element)
    return " ".join("".join(parts).split())


def _tables(tree: Any, css_class: str) -> list[Any]:
    return [t for t in tree.iter("table") if css_class in (t.get("class") or "").split()]


def _cells(row: Any) -> list[Any]:
    return [c for c in row if c.tag in ("td", "th")]


def _rows(table: Any, part: str) -> list[list[Any]]:
    return [_cells(tr) for section in table.iter(part) for tr in section.iter("tr")]


# ------------------------------------------------------------- cells against their data

_NUM = r"[+\-−]?\d+(?:\.\d+)?"
_ESTIMATE = re.compile(
    rf"^(?P<effect>{_NUM}|–)\s+(?:\[(?P<low>{_NUM}),\s*(?P<high>{_NUM})\]"
    r"|(?P<noci>n = \d+: no CI|no CI))\s+(?P<symbol>\S)\s+(?P<verdict>[a-z]+)"
    r"(?:\s+(?P<epoch>(?:at|over) .+))?$")


def _number(token: str) -> tuple[float, float]:
    """A shown number and half a unit of its last digit (the rounding it may hide)."""
    token = token.replace("−", "-").replace(",", "")
    decimals = len(token.split(".", 1)[1]) if "." in token else 0
    return float(token), 0.5 * 10.0 ** -decimals * (1 + 1e-9) + 1e-12


def _close(token: str, value: Any, scale: float = 1.0) -> bool:
    """Whether the shown ``token`` is ``value × scale`` rounded to the digits it shows."""
    if value is None:
        return False
    shown, tolerance = _number(token)
    return abs(shown - float(value) * scale) <= tolerance


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def estimate_cell_problems(text: str, css: str, claim: dict[str, Any], where: str) -> list[str]:
    """What is wrong with one scorecard cell showing ``claim`` (empty list: it is right)."""
    match = _ESTIMATE.match(text)
    if match is None:
        return [f"{where}: {text!r} does not read 'effect [low, high] verdict'"]
    problems = []
    if match["effect"] == "–":
        if _finite(claim.get("effect")):
            problems.append(f"{where}: shows no effect, claims.json has {claim['effect']}")
    elif not _close(match["effect"], claim.get("effect")):
        problems.append(f"{where}: effect {match['effect']} but claims.json has "
                        f"{claim.get('effect')}")
    has_ci = _finite(claim.get("ci_low")) and _finite(claim.get("ci_high"))
    if match["noci"]:
        if has_ci:
            problems.append(f"{where}: says {match['noci']!r} but claims.json has "
                            f"[{claim['ci_low']}, {claim['ci_high']}]")
    elif not has_ci:
        problems.append(f"{where}: shows an interval but claims.json has none")
    else:
        for end in ("low", "high"):
            if not _close(match[end], claim[f"ci_{end}"]):
                problems.append(f"{where}: CI {end} {match[end]} but claims.json has "
                                f"{claim[f'ci_{end}']}")
        if match["low"] == match["high"] and float(claim["ci_low"]) < float(claim["ci_high"]):
            problems.append(f"{where}: the interval [{match['low']}, {match['high']}] collapses "
                            "to one number; show more decimals")
    verdict = str(claim["verdict"])
    if match["verdict"] != verdict:
        problems.append(f"{where}: verdict {match['verdict']!r} but claims.json has {verdict!r}")
    if match["symbol"] != scorecards.VERDICT_SYMBOLS.get(verdict):
        problems.append(f"{where}: symbol {match['symbol']!r} does not match {verdict!r}")
    if f"verdict-{verdict}" not in css.split():
        problems.append(f"{where}: coloured as {css!r}, not as verdict-{verdict}")
    epoch = scorecards.epoch_text(claim)
    if (match["epoch"] or "") != epoch:
        problems.append(f"{where}: says {match['epoch'] or 'no epoch'!r} but claims.json's "
                        f"epochs give {epoch or 'none'!r}")
    return problems


def scorecard_problems(table: Any, claims: list[dict[str, Any]], where: str) -> list[Problem]:
    """A scorecard table read back against ``claims.json``: header (dataset, tier, regime,
    protocol of each column), row labels, and every cell (:func:`estimate_cell_problems`);
    every claim row must be shown exactly once."""
    expected = scorecards.Scorecard.from_claims(claims)
    found: list[str] = []
    header = _rows(table, "thead")
    heads = [element_text(c) for c in header[0]] if header else []
    fixed = list(scorecards.FIXED_HEADER)
    if heads[:len(fixed)] != fixed or len(heads) != len(fixed) + len(expected.columns):
        return [Problem(where, f"scorecard header {heads} does not match claims.json's "
                               f"{len(expected.columns)} dataset × tier column(s)")]
    for column, head in zip(expected.columns, heads[len(fixed):], strict=True):
        wanted = [f"{column.dataset} · {column.tier}", *column.regimes]
        if expected.with_protocol:
            wanted.append(column.protocol)
        found += [f"scorecard column {head!r} does not show {w!r}" for w in wanted
                  if w not in head]
    body = _rows(table, "tbody")
    if len(body) != len(expected.rows):
        found.append(f"scorecard has {len(body)} row(s), claims.json gives {len(expected.rows)}")
    shown = 0
    for row, cells in zip(expected.rows, body, strict=False):
        texts = [element_text(c) for c in cells]
        if texts[:3] != [row.label, row.paper, row.unit or scorecards.EMPTY]:
            found.append(f"scorecard row {texts[:3]} should read "
                         f"{[row.label, row.paper, row.unit or scorecards.EMPTY]}")
            continue
        for column, cell, text in zip(expected.columns, cells[3:], texts[3:], strict=False):
            claim = row.cells.get(column.key)
            at = f"scorecard {row.label} × {column.dataset} · {column.tier} · {column.protocol}"
            if claim is None:
                if text != scorecards.EMPTY:
                    found.append(f"{at}: shows {text!r} for a claim claims.json does not have")
                continue
            shown += 1
            found += estimate_cell_problems(text, cell.get("class") or "", claim, at)
    if not found and shown != len(claims):
        found.append(f"scorecard shows {shown} of the {len(claims)} rows of claims.json")
    return [Problem(where, p) for p in found]


def _mean_std_problems(text: str, mean: Any, std: Any, at: str) -> list[str]:
    parts = [p.strip() for p in text.split("±")]
    problems = []
    if not _close(parts[0], mean, 100):
        problems.append(f"{at}: mean {parts[0]} but summary.json has {mean}")
    if len(parts) > 1 and not _close(parts[1], std, 100):
        problems.append(f"{at}: std {parts[1]} but summary.json has {std}")
    return problems


def _interval_problems(text: str, low: Any, high: Any, at: str) -> list[str]:
    match = re.fullmatch(rf"\[({_NUM}), ({_NUM})\]", text)
    if match is None:
        return [] if low is None or high is None else [f"{at}: {text!r} is not an interval"]
    problems = [f"{at}: {end} {token} but summary.json has {value}"
                for end, token, value in (("low", match[1], low), ("high", match[2], high))
                if not _close(token, value, 100)]
    if match[1] == match[2] and low is not None and high is not None and low < high:
        problems.append(f"{at}: the interval {text} collapses to one number")
    return problems


def headline_problems(table: Any, summary: dict[str, Any], where: str) -> list[Problem]:
    """The headline table read back against ``summary.json``'s ``headline``: every mean ± std
    (%), the paired difference and both intervals (pp), the p-value and the seed count."""
    header = _rows(table, "thead")
    heads = [element_text(c) for c in header[0]] if header else []
    metrics = summary.get("metrics", {})
    body = _rows(table, "tbody")
    found = []
    if len(body) != len(metrics):
        found.append(f"headline has {len(body)} row(s), summary.json {len(metrics)} metric(s)")
    for cells in body:
        texts = [element_text(c) for c in cells]
        metric = texts[0] if texts else ""
        data = metrics.get(metric)
        if data is None:
            found.append(f"headline row {metric!r} is not a metric of summary.json")
            continue
        for head, text in zip(heads[1:], texts[1:], strict=False):
            at = f"headline {metric} × {head}"
            if head.startswith(f"{summary.get('baseline')} (%"):
                found += _mean_std_problems(text, data["baseline_mean"], data["baseline_std"], at)
            elif head.startswith(f"{summary.get('treatment')} (%"):
                found += _mean_std_problems(text, data["treatment_mean"], data["treatment_std"],
                                            at)
            elif head == "Δ (pp)":
                if not _close(text, data["mean_difference"], 100):
                    found.append(f"{at}: {text} but summary.json has {data['mean_difference']}")
            elif "bootstrap CI" in head:
                found += _interval_problems(text, data["bootstrap_ci_low"],
                                            data["bootstrap_ci_high"], at)
            elif "t CI" in head:
                found += _interval_problems(text, data["t_ci_low"], data["t_ci_high"], at)
            elif head == "paired t p":
                p = data.get("p_value")
                if (p is None) != (text == "–") or (p is not None and not _close(text, p)):
                    found.append(f"{at}: {text} but summary.json has {p}")
            elif head == "seeds":
                if text != str(int(data["n"])):
                    found.append(f"{at}: {text} but summary.json has {data['n']}")
            else:
                found.append(f"headline column {head!r} is not one the check knows")
    return [Problem(where, p) for p in found]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def table_problems(study_dir: str | Path) -> list[Problem]:
    """Every scorecard and headline table of the study's pages against its data.

    Pages in :data:`SCORECARD_PAGES` must show the scorecard when ``claims.json`` exists;
    the index must show the headline when ``summary.json`` has one.
    """
    study_dir = Path(study_dir)
    claims = _load_json(study_dir / "claims.json")
    summary = _load_json(study_dir / "summary.json")
    headline = summary.get("headline") if isinstance(summary, dict) else None
    problems: list[Problem] = []
    for page in study_pages(study_dir):
        if not page.is_file():
            continue
        where = page.relative_to(study_dir).as_posix()
        tree, _ = parse_html(page.read_text(encoding="utf-8", errors="replace"))
        cards = _tables(tree, scorecards.CSS_CLASS)
        if isinstance(claims, list):
            if not cards and where in SCORECARD_PAGES:
                problems.append(Problem(where, "no scorecard table (class 'scorecard') though "
                                               "claims.json exists"))
            for table in cards:
                problems += scorecard_problems(table, claims, where)
        elif cards:
            problems.append(Problem(where, "shows a scorecard but there is no claims.json"))
        heads = _tables(tree, "headline")
        if headline and where == "index.html" and not heads:
            problems.append(Problem(where, "no headline table though summary.json has one"))
        for table in heads:
            if headline:
                problems += headline_problems(table, headline, where)
            else:
                problems.append(Problem(where, "shows a headline summary.json does not have"))
    return problems


def index_figures(index: Path) -> list[str]:
    """The ``src`` of every image on a page."""
    text = index.read_text(encoding="utf-8")
    return re.findall(r"<img\b[^>]*\bsrc\s*=\s*['\"]([^'\"]+)['\"]", text, re.IGNORECASE)


def study_pages(study_dir: str | Path) -> list[Path]:
    """Every HTML page of a study: the index first, then notebooks, then runs."""
    study_dir = Path(study_dir)
    index = study_dir / "index.html"
    others = [p for p in sorted(study_dir.glob("*.html")) if p != index]
    return [index, *others, *sorted(study_dir.glob("runs/*.html"))]


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on this machine, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


_PAGE_STATE = """() => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'),
                                                 ok: i.complete && i.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const stderr = document.querySelectorAll('.output_stderr, .output_error').length;
  return {images, links, stderr, text: document.body ? document.body.innerText : ''};
}"""


def browser_check(
    pages: Iterable[str | Path],
    screenshots: str | Path | None = None,
    executable: str | None = None,
    width: int = 1280,
) -> list[Problem]:
    """Open each page in headless Chromium with the network blocked; return the problems.

    Raises ``RuntimeError`` when Playwright or a Chromium executable is missing (install
    ``playwright`` from PyPI and Debian's ``chromium``; no browser download is needed).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError("browser checks need Playwright: pip install playwright") from exc
    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError("no chromium found; install it (Debian: apt-get install chromium)")
    pages = [Path(p).resolve() for p in pages]
    shot_dir = Path(screenshots) if screenshots is not None else None
    if shot_dir is not None:
        shot_dir.mkdir(parents=True, exist_ok=True)
    problems: list[Problem] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": 900},
                                          service_workers="block")
            for path in pages:
                problems += _check_page(context, path, shot_dir)
        finally:
            browser.close()
    return problems


def _check_page(context: BrowserContext, path: Path, shot_dir: Path | None) -> list[Problem]:
    where = path.name if path.parent.name != "runs" else f"runs/{path.name}"
    problems: list[Problem] = []
    left: list[str] = []
    console: list[str] = []

    def route(route: Route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "about:")):
            route.continue_()
        else:
            left.append(url)
            route.abort()

    page = context.new_page()
    page.route("**/*", route)
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(str(e)))
    try:
        page.goto(path.as_uri(), wait_until="load")
        state = page.evaluate(_PAGE_STATE)
        if shot_dir is not None:
            page.screenshot(path=str(shot_dir / f"{where.replace('/', '__')}.png"),
                            full_page=True)
    finally:
        page.close()
    problems += [Problem(where, f"request leaving the machine: {u}") for u in left]
    problems += [Problem(where, f"console error: {c}") for c in console]
    problems += [Problem(where, f"image did not load: {i['src'][:80]}")
                 for i in state["images"] if not i["ok"]]
    for link in state["links"]:
        parts = urlsplit(link)
        if parts.scheme == "file":
            target = Path(unquote(parts.path))
            if not target.exists():
                problems.append(Problem(where, f"broken link: {link}"))
    if state["stderr"]:
        problems.append(Problem(where, f"{state['stderr']} warning/error box(es)"))
    text = state["text"]
    problems += [Problem(where, f"shows {word!r}") for word in BAD_WORDS if word in text]
    problems += [Problem(where, f"shows absolute path {p!r}") for p in find_machine_paths(text)]
    problems += [Problem(where, f"shows the staging directory: {_context(text, m)!r}")
                 for m in _STAGING.finditer(text)]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dml_study.study.report.pagecheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="e.g. results/embedded")
    parser.add_argument("--min-figures", type=int, default=0,
                        help="fail when index.html shows fewer figures")
    parser.add_argument("--browser", action="store_true",
                        help="also open every page in headless chromium")
    parser.add_argument("--screenshots", type=Path, help="save one PNG per page here")
    args = parser.parse_args(argv)
    problems = scan_study(args.study_dir, args.min_figures)
    if args.browser:
        problems += browser_check(study_pages(args.study_dir), args.screenshots)
    for problem in problems:
        print(problem)
    pages = len(study_pages(args.study_dir))
    print(f"{len(problems)} problem(s) in {args.study_dir} ({pages} pages)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
