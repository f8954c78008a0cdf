"""Self-contained HTML pages: notebooks rendered without any script, style or font from the network.

nbconvert's ``lab``/``classic`` templates load require.js and MathJax from a CDN, so a page
opened offline shows raw LaTeX. Here a notebook is rendered with the ``basic`` template (body
only), its LaTeX is converted to MathML at build time (every browser renders MathML
natively), every ``<script>`` and remote ``<link>`` is dropped, and the body is wrapped in a
page whose CSS is inline. Figures are the PNGs the notebook embedded. The page looks the
same with the network on or off.

Math in Markdown cells: ``$…$`` / ``\\(…\\)`` inline and ``$$…$$`` / ``\\[…\\]`` display, outside
code spans and fenced code. A formula latex2mathml cannot convert stays visible as code
(class ``tex-error``) and is listed by :func:`markdown_math_errors`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

import nbformat

from dml_study.study.report.markup import is_number_text

#: Code spans and fenced code blocks: math is never looked for inside them.
_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.DOTALL)
#: Display math first, so ``$$x$$`` is not read as two inline formulas.
_MATH = re.compile(
    r"\$\$(?P<d1>.+?)\$\$|\\\[(?P<d2>.+?)\\\]|\\\((?P<i2>.+?)\\\)"
    r"|(?<![\\$\w])\$(?P<i1>[^$\n]+?)\$(?!\w)",
    re.DOTALL,
)
_PLACEHOLDER = "MATHPLACEHOLDER{}X"
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.DOTALL | re.IGNORECASE)
_REMOTE_LINK = re.compile(r"<link\b[^>]*href=['\"]?(?:https?:)?//[^>]*>", re.IGNORECASE)


def latex_to_mathml(latex: str, display: bool = False) -> str:
    """MathML for one formula (raises ``ValueError`` if latex2mathml cannot convert it)."""
    from latex2mathml.converter import convert

    try:
        mathml = convert(latex.strip(), display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises assorted exception types
        raise ValueError(f"cannot convert LaTeX {latex!r} to MathML: {exc}") from exc
    for before, after in _MATHML_FIXES:
        mathml = mathml.replace(before, after)
    return mathml


#: latex2mathml output that browsers draw badly: the ASCII caret as a hat accent (drawn
#: high above the letter; the modifier circumflex sits on it) and norm bars that stretch
#: to the hats on one side only.
_MATHML_FIXES = (
    ("<mo>&#x0005E;</mo></mover>", "<mo>&#x002C6;</mo></mover>"),
    ("<mo>&#x02016;</mo>", "<mo stretchy=\"false\">&#x02016;</mo>"),
)


def _math_html(latex: str, display: bool) -> str:
    try:
        return latex_to_mathml(latex, display)
    except ValueError:
        tag = "pre" if display else "code"
        return f"<{tag} class='tex-error'>{html.escape(latex)}</{tag}>"


def replace_markdown_math(text: str, replace: Callable[[str, bool], str]) -> str:
    """``text`` with each formula (outside code) replaced by ``replace(latex, display)``."""

    def in_prose(part: str) -> str:
        def one(match: re.Match[str]) -> str:
            display = match["d1"] is not None or match["d2"] is not None
            latex = next(g for g in (match["d1"], match["d2"], match["i1"], match["i2"]) if g)
            return replace(latex, display)

        return _MATH.sub(one, part)

    pieces = _CODE.split(text)
    return "".join(p if i % 2 else in_prose(p) for i, p in enumerate(pieces))


def markdown_math_errors(notebook: nbformat.NotebookNode) -> list[str]:
    """Formulas of the notebook's Markdown cells that cannot be converted to MathML."""
    errors: list[str] = []

    def check(latex: str, display: bool) -> str:
        try:
            latex_to_mathml(latex, display)
        except ValueError as exc:
            errors.append(str(exc))
        return ""

    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            replace_markdown_math(cell.source, check)
    return errors


def notebook_body(notebook: nbformat.NotebookNode) -> str:
    """The notebook as an HTML fragment: no scripts, math as MathML."""
    from nbconvert import HTMLExporter

    notebook = nbformat.from_dict(notebook)  # a copy: the caller's notebook is not touched
    formulas: list[str] = []

    def stash(latex: str, display: bool) -> str:
        formulas.append(_math_html(latex, display))
        return _PLACEHOLDER.format(len(formulas) - 1)

    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = replace_markdown_math(cell.source, stash)
    describe_figures(notebook)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(notebook)
    for index, mathml in enumerate(formulas):
        body = body.replace(_PLACEHOLDER.format(index), mathml)
    return align_text_columns(strip_remote(body))


def align_text_columns(body: str) -> str:
    """Mark the text columns of pandas tables (class ``text``) so they align left.

    pandas right-aligns every cell, which suits numbers but makes names and notes hard to
    read. A column whose non-empty cells are not all numbers gets class ``text`` on its
    cells and header.
    """
    if "class=\"dataframe\"" not in body:
        return body
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, "html.parser")
    for table in soup.select("table.dataframe"):
        rows = [tr.find_all(["td", "th"], recursive=False) for tr in table.select("tbody > tr")]
        width = max((len(r) for r in rows), default=0)
        if not rows or any(len(r) != width for r in rows):
            continue  # merged index cells (rowspan): leave the table as pandas drew it
        header = table.select("thead > tr")
        last = header[-1].find_all(["th", "td"], recursive=False) if header else []
        for column in range(width):
            cells = [r[column] for r in rows]
            texts = [c.get_text(" ", strip=True) for c in cells]
            if all(not t or is_number_text(t) for t in texts):
                continue
            for cell in cells + ([last[column]] if len(last) == width else []):
                cell["class"] = [*cell.get("class", []), "text"]
    return str(soup)


def describe_figures(notebook: nbformat.NotebookNode) -> None:
    """Give every figure without alternative text one: the section it appears in.

    (nbconvert would otherwise write "No description has been provided" and log a warning
    per page.) The text is the last Markdown heading above the figure, numbered.
    """
    section, count = "Figure", 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            headings = [ln.lstrip("#").strip() for ln in cell.source.splitlines()
                        if ln.startswith("#")]
            if headings:
                section, count = headings[-1], 0
            continue
        for output in cell.get("outputs", []):
            for mime in ("image/png", "image/jpeg", "image/svg+xml"):
                if mime in output.get("data", {}):
                    meta = output.setdefault("metadata", {}).setdefault(mime, {})
                    if not meta.get("alt"):
                        count += 1
                        meta["alt"] = f"{section}, figure {count}"


def strip_remote(body: str) -> str:
    """``body`` without any ``<script>`` element and without remote stylesheets."""
    return _REMOTE_LINK.sub("", _SCRIPT.sub("", body))


def page(title: str, body: str, extra_css: str = "") -> str:
    """A complete HTML page around ``body`` with the inline stylesheet of every study page."""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{PAGE_CSS}{_pygments_css()}{extra_css}"
        "</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def notebook_page(notebook: nbformat.NotebookNode, title: str, back_link: str | None) -> str:
    """A notebook as a complete self-contained page, with a link back to the index."""
    nav = (f"<nav><a href='{html.escape(back_link)}'>← study index</a></nav>\n"
           if back_link else "")
    return page(title, f"{nav}<main class='notebook'>\n{notebook_body(notebook)}\n</main>")


def render_notebook(executed: str | Path, output: str | Path | None = None,
                    back_link: str | None = None) -> Path:
    """Render an executed notebook to a self-contained page next to it (or ``output``)."""
    from dml_study.atomic_io import atomic_write_text

    executed = Path(executed)
    output = Path(output) if output is not None else executed.with_suffix(".html")
    notebook = nbformat.read(executed, as_version=4)
    atomic_write_text(output, notebook_page(notebook, executed.stem, back_link))
    return output


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    css = HtmlFormatter(style="default").get_style_defs(".highlight")
    return re.sub(r"\s*/\*.*?\*/", "", css) + "\n"  # its comments name "Traceback" etc.


PAGE_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --code: #f6f8fa; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); line-height: 1.5; margin: 0 auto; padding: 1rem 1.5rem 3rem;
       max-width: 72rem; font-size: 16px; }
nav { margin-bottom: 1rem; font-size: 0.9rem; }
a { color: #0969da; }
h1, h2, h3 { line-height: 1.25; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; margin-top: 2rem; }
code, pre, .highlight { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
       font-size: 0.85rem; }
code { background: var(--code); padding: 0.1rem 0.3rem; border-radius: 4px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.6rem; text-align: right;
         vertical-align: top; }
th { background: var(--code); }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
img { max-width: 100%; height: auto; }
figure { margin: 1.5rem 0; }
figcaption { color: var(--muted); font-size: 0.9rem; }
math { font-family: "STIX Two Math", "Latin Modern Math", "DejaVu Math TeX Gyre", math;
       font-size: 1.05em; }
math[display="block"] { margin: 0.6rem 0; }
.tex-error { color: #b00020; }
.failed, .verdict-contradicted { color: #b00020; font-weight: 600; }
.verdict-supported { color: #1a7f37; font-weight: 600; }
.verdict-inconclusive { color: var(--muted); font-weight: 600; }
/* the claims scorecard: a tinted cell per verdict (with its symbol and word: never colour
   alone); dark text on light tints keeps a contrast ratio above 7:1 */
table.scorecard { display: block; overflow-x: auto; max-width: 100%; }
table.scorecard th { vertical-align: bottom; white-space: nowrap; text-align: left; }
table.scorecard td.estimate-cell { white-space: nowrap; text-align: left;
  font-variant-numeric: tabular-nums; font-weight: 400; }
table.scorecard td.label { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  font-size: 0.85rem; cursor: help; }
table.scorecard .estimate { font-weight: 600; }
table.scorecard .ci { display: block; font-size: 0.85rem; }
table.scorecard .verdict { display: block; font-weight: 600; font-size: 0.85rem; }
table.scorecard .epoch { display: block; font-size: 0.75rem; opacity: 0.8; }
td.estimate-cell.verdict-supported { background: #dafbe1; color: #0f5323; }
td.estimate-cell.verdict-contradicted { background: #ffebe9; color: #82071e; }
td.estimate-cell.verdict-inconclusive { background: #eef1f4; color: #32383f; }
td.empty { color: var(--muted); text-align: center; }
dl.notes { font-size: 0.85rem; color: var(--muted); margin: 0.4rem 0 1rem;
  display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 0.8rem; }
dl.notes dt { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
dl.notes dd { margin: 0; }
.note { color: var(--muted); font-size: 0.9rem; }
/* notebook cells (nbconvert "basic" template) */
.cell { margin: 0.8rem 0; }
.input_area { background: var(--code); border: 1px solid var(--line); border-radius: 4px;
              padding: 0.4rem 0.6rem; overflow-x: auto; }
.input_area pre { white-space: pre; word-break: normal; }
.prompt { display: none; }
.output_area { margin: 0.3rem 0 0 0; overflow-x: auto; }
.output_text pre { padding: 0.3rem 0.6rem; }
/* consecutive printed lines (one stream output each) read as one block */
.output_wrapper .output_area:has(.output_stream) { margin-top: 0; }
.output_stream pre { padding-top: 0; padding-bottom: 0; }
.output_wrapper .output > .output_area:first-child { margin-top: 0.4rem; }
.output_stderr { background: #fff5f5; border-left: 3px solid #cf222e; }
.output_error pre { background: #fff5f5; padding: 0.4rem 0.6rem; }
.dataframe { font-variant-numeric: tabular-nums; }
.dataframe thead th { text-align: right; }
.dataframe td.text, .dataframe th.text { text-align: left; }
.text_cell_render { padding: 0.2rem 0; }
.anchor-link { display: none; }
.celltag_injected-parameters .input_area::before { content: "parameters this run was executed with";
  display: block; color: var(--muted); font-size: 0.8rem; font-family: system-ui, sans-serif; }
"""


def render_html(
    executed: str | Path, output: str | Path | None = None, back_link: str | None = None
) -> Path:
    """Render an executed notebook to a self-contained HTML page next to it (or ``output``).

    No script, style or font comes from the network and math is MathML (see
    :mod:`dml_study.study.report.pages`), so the page looks the same offline. Papermill's
    injected-parameters cell stays visible: it records what the notebook was run with.
    ``back_link`` (e.g. ``"index.html"``) adds a link to the study index at the top.
    """
    return render_notebook(executed, output, back_link=back_link)
