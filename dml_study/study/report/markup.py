"""The one escaping path of the report: every table a reader sees is built here.

A cell's text is data (a claim, a regime ``C<d``, a run name), never markup: written into
HTML unescaped, ``C<d`` opens an element ``<d>`` and the browser shows ``C``. So every HTML
table of the report — the index (:mod:`~dml_study.study.report.index`), the scorecard
(:mod:`~dml_study.study.report.scorecard`) and the tables the notebooks display
(:func:`frame_table`, instead of a pandas ``Styler``, which does not escape by default) —
is written by :func:`html_table`, which escapes every text with :func:`html_text`. Links
are :class:`Cell` values with an ``href``, never HTML typed into a string. Markdown tables
(the study's ``README.md``, the project README's scorecard) go through
:func:`markdown_table` and :func:`markdown_text` alike.

:func:`is_number_text` decides the alignment: numbers right, text left (class ``text``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: A number, interval or mean ± std, optionally with a unit word ("+5.0 pp", "[−1.4, +2.0]",
#: "43.5 ± 0.6", "31 s") or the dash for "none": right-aligned in tables, the rest left.
_NUMBER = re.compile(
    r"–|-|−|[-+–−\[(]{0,2}\d[\d.,+\-–−±\[\]() %eE]*(?: ?[a-z]+)?|nan|NaN|None")


def is_number_text(text: str) -> bool:
    """Whether a table cell's text reads as a number (see :data:`_NUMBER`)."""
    return _NUMBER.fullmatch(text.strip()) is not None


def html_text(value: Any) -> str:
    """``value`` as HTML text: ``&``, ``<``, ``>`` and both quotes escaped (safe in
    element content and in quoted attribute values alike)."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, and optionally a link, a tooltip and CSS classes.

    ``lines`` (when given) are shown one per line instead of ``text`` in HTML (joined by
    ``" · "`` in Markdown); ``parts`` are ``(css class, text)`` spans for cells that style
    pieces of their text (the scorecard's estimate, interval and verdict).
    """

    text: str
    href: str | None = None
    title: str | None = None
    css: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def plain(self) -> str:
        """The cell's text as one line (what a reader reads, and Markdown shows)."""
        if self.parts:
            return " ".join(text for _, text in self.parts)
        if self.lines:
            return " · ".join(self.lines)
        return self.text


#: What a table cell may be given as: plain text, (text, link) or a :class:`Cell`.
CellLike = str | tuple[str, str] | Cell | int | float | None


def as_cell(value: CellLike) -> Cell:
    """A :class:`Cell` for ``value``: text, ``(text, href)`` or a cell (``None`` is "–")."""
    if isinstance(value, Cell):
        return value
    if isinstance(value, tuple):
        text, href = value
        return Cell(str(text), href=str(href))
    return Cell("–" if value is None else str(value))


def _attributes(attributes: Mapping[str, str | None]) -> str:
    return "".join(f" {name}='{html_text(value)}'" for name, value in attributes.items()
                   if value is not None and value != "")


def html_cell(value: CellLike, tag: str = "td", css: Iterable[str] = ()) -> str:
    """One ``<td>``/``<th>``, every text escaped; non-numeric text gets class ``text``."""
    cell = as_cell(value)
    if cell.parts:
        body = " ".join(f"<span class='{html_text(c)}'>{html_text(t)}</span>"
                        for c, t in cell.parts)
    elif cell.lines:
        body = "<br>".join(html_text(line) for line in cell.lines)
    else:
        body = html_text(cell.text)
    if cell.href is not None:
        body = f"<a href='{html_text(cell.href)}'>{body}</a>"
    classes = [c for c in (*css, *cell.css) if c]
    if not is_number_text(cell.plain) and "text" not in classes:
        classes.append("text")
    return f"<{tag}{_attributes({'class': ' '.join(classes), 'title': cell.title})}>{body}</{tag}>"


def html_table(header: Sequence[CellLike], rows: Iterable[Sequence[CellLike]], *,
               css_class: str | None = None, caption: str | None = None,
               attributes: Mapping[str, str] | None = None) -> str:
    """An HTML table (``thead``/``tbody``, no index column) with every cell escaped."""
    attrs = _attributes({"class": css_class, **(attributes or {})})
    parts = [f"<table{attrs}>"]
    if caption:
        parts.append(f"<caption>{html_text(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(html_cell(h, "th") for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    parts += ["<tr>" + "".join(html_cell(c) for c in row) + "</tr>" for row in rows]
    parts.append("</tbody></table>")
    return "\n".join(parts)


#: Characters that Markdown would read as markup inside a table cell: the column bar, a
#: backslash, and ``<`` (``C<d and C>>d`` would open an HTML element ``<d and C>``).
_MARKDOWN_SPECIAL = re.compile(r"([\\|<])")


def markdown_text(value: Any) -> str:
    """``value`` as the text of a Markdown table cell (one line, markup characters escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


def markdown_cell(value: CellLike) -> str:
    """One Markdown cell: escaped text, a link when the cell has one."""
    cell = as_cell(value)
    text = markdown_text(cell.plain)
    return f"[{text}]({cell.href})" if cell.href is not None else text


def markdown_table(header: Sequence[CellLike], rows: Iterable[Sequence[CellLike]]) -> str:
    """A GitHub-flavoured Markdown table with every cell escaped."""
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def html_notes(notes: Sequence[tuple[str, str]]) -> str:
    """Footnotes ``(term, text)`` as an escaped definition list (class ``notes``)."""
    items = "".join(f"<dt>{html_text(term)}</dt><dd>{html_text(text)}</dd>"
                    for term, text in notes)
    return f"<dl class='notes'>{items}</dl>"


def markdown_notes(notes: Sequence[tuple[str, str]]) -> str:
    """Footnotes ``(term, text)`` as a Markdown list, the term as code."""
    return "\n".join(f"- `{term}`: {markdown_text(text)}" for term, text in notes)


class HtmlTable:
    """A table for a notebook: ``display(table)`` shows the escaped HTML (``text/html``)
    and, where HTML is not shown, the Markdown table (``text/plain``)."""

    def __init__(self, header: Sequence[CellLike], rows: Iterable[Sequence[CellLike]], *,
                 css_class: str | None = None, caption: str | None = None,
                 notes: Sequence[tuple[str, str]] = ()) -> None:
        self.header = list(header)
        self.rows = [list(row) for row in rows]
        self.css_class = css_class
        self.caption = caption
        #: Footnotes below the table, ``(term, text)`` (e.g. a row label and its claim).
        self.notes = list(notes)

    def to_html(self) -> str:
        """The table as HTML (every cell escaped by :func:`html_table`), then its notes."""
        table = html_table(self.header, self.rows, css_class=self.css_class,
                           caption=self.caption)
        return table + ("\n" + html_notes(self.notes) if self.notes else "")

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, then its notes as a list."""
        text = markdown_table(self.header, self.rows)
        return text + ("\n\n" + markdown_notes(self.notes) if self.notes else "")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.to_markdown()


def frame_table(frame: pd.DataFrame, *, css_class: str | None = "report-table",
                caption: str | None = None) -> HtmlTable:
    """A DataFrame as an escaped table for a notebook (its columns; the index is not shown).

    The replacement for ``frame.style.hide(axis="index")``: a Styler writes cell text into
    HTML unescaped. Values may be :class:`Cell` (e.g. ``Cell("doi.org", href=url)`` for a
    link); every other value is shown as its text, ``None``/NaN as "–".
    """
    def value(v: Any) -> CellLike:
        if isinstance(v, Cell):
            return v
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        return str(v)

    rows = [[value(v) for v in row] for row in frame.itertuples(index=False)]
    return HtmlTable(list(map(str, frame.columns)), rows, css_class=css_class, caption=caption)
