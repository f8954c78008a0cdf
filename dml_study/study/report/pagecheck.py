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
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

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
    """Problems in the text of one file (machine paths, bad words, remote resources)."""
    problems = [Problem(where, f"absolute machine path {p!r}") for p in find_machine_paths(text)]
    problems += [Problem(where, f"contains {word!r}") for word in BAD_WORDS if word in text]
    problems += [Problem(where, f"loads from the network: {m.group(0)!r}")
                 for m in _REMOTE.finditer(text)]
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
            problems += scan_text(text, str(path.relative_to(study_dir)))
    for notebook in sorted(study_dir.glob("runs/*.ipynb")):
        if not notebook.with_suffix(".html").is_file():
            problems.append(Problem(str(notebook.relative_to(study_dir)), "no rendered .html"))
    figures = index_figures(study_dir / "index.html")
    if len(figures) < min_figures:
        problems.append(Problem("index.html", f"{len(figures)} figure(s), expected at least "
                                              f"{min_figures}"))
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
