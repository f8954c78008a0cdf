"""The claims scorecard for readers: one row per claim, one column per dataset × tier × protocol.

``claims.json`` is long: one row per (claim, dataset, tier), each repeating the claim's
sentence. :class:`Scorecard` pivots it into the table a reader scans:

- **rows** — one per claim, labelled with the claim's ``name`` (the sentence goes into the
  row's tooltip and the footnotes below the table). Claims that compare the same thing in
  different tiers (same paper, metric, baseline, treatment, direction and unit, e.g.
  ``so_r1`` on the frozen tier and ``so_r1_finetuned`` on the fine-tuned tier) share a
  row: their cells land in different columns. Should two of them fall into one cell, they
  keep a row each.
- **columns** — one per dataset × tier, in the order of ``claims.json``; the header names
  the regime (``C<d``, ``C>>d``) and the shape ``C``, ``d``. When rows carry a
  ``protocol`` (``preset``: the dataset preset's hyper-parameters; ``tuned``: the tuned
  ones; rows without the field are ``preset``), every dataset × tier gets a column per
  protocol, ``tuned`` first.
- **cells** — the effect, its confidence interval, the verdict and the epoch the numbers
  come from (:func:`epoch_text`: the preset's final epoch, or the tuned arm's
  validation-selected one): ``−0.07 [−0.29, +0.16] ○ inconclusive at epoch 15 (final)``.
  Decimals follow the interval's width
  (:func:`~dml_study.study.analysis.stats.format_estimate`: the half-width keeps two
  significant digits, so no interval collapses to one number); without an interval the
  cell says why (``n = 1: no CI``). The verdict is a word and a symbol (✓ supported,
  ✗ contradicted, ○ inconclusive) and, on pages, a background colour: never colour alone.

The same :class:`Scorecard` is written to the index, displayed by ``05_results`` and
generated into the project README (:mod:`~dml_study.study.report.readme`); every HTML
cell is escaped by :mod:`~dml_study.study.report.markup`. :func:`write_claims_csv` keeps the
long table as ``claims.csv`` beside ``claims.json``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_study.atomic_io import atomic_write_text
from dml_study.study.analysis.claims import arm_epochs
from dml_study.study.analysis.stats import format_estimate
from dml_study.study.report.markup import Cell, HtmlTable

#: Protocols of a claim row, in the order their columns are shown; rows without a
#: ``protocol`` field are :data:`DEFAULT_PROTOCOL`.
PROTOCOLS: tuple[str, ...] = ("tuned", "preset")
DEFAULT_PROTOCOL = "preset"
#: The symbol shown with each verdict (the word is always shown too).
VERDICT_SYMBOLS: dict[str, str] = {"supported": "✓", "contradicted": "✗", "inconclusive": "○"}
#: Fixed columns before the dataset × tier columns.
FIXED_HEADER: tuple[str, ...] = ("claim", "paper", "unit")
#: The CSS class of the scorecard table (the page check finds it by this class).
CSS_CLASS = "scorecard"
#: What an empty cell (no such claim for that dataset × tier) shows.
EMPTY = "–"


def protocol_of(claim: dict[str, Any]) -> str:
    """A claim row's protocol (``preset`` when the row has none)."""
    return str(claim.get("protocol") or DEFAULT_PROTOCOL)


def shape_of(claim: dict[str, Any]) -> tuple[int, int] | None:
    """``(C, d)`` of a claim row's proxies (``None`` when the row does not record them)."""
    if claim.get("classes") is None or claim.get("dim") is None:
        return None
    return int(claim["classes"]), int(claim["dim"])


#: Which column a claim row lands in: ``(dataset, tier, protocol, (C, d) or None)``.
ColumnKey = tuple[str, str, str, "tuple[int, int] | None"]


def column_key(claim: dict[str, Any]) -> ColumnKey:
    """``(dataset, tier, protocol, (C, d))``: which column a claim row lands in (one column
    per proxy shape, so every column has one regime)."""
    return str(claim["dataset"]), str(claim["tier"]), protocol_of(claim), shape_of(claim)


def comparison_key(claim: dict[str, Any]) -> tuple[str, ...]:
    """What a claim compares, whatever its tier: rows with equal keys share a row."""
    return tuple(str(claim.get(k) or "") for k in
                 ("paper", "metric", "baseline", "treatment", "direction", "unit"))


def verdict_text(verdict: str) -> str:
    """``"✓ supported"``: the verdict's symbol and word."""
    return f"{VERDICT_SYMBOLS.get(verdict, '?')} {verdict}"


def estimate_texts(claim: dict[str, Any]) -> tuple[str, str]:
    """The effect and interval texts of one claim row (``("−0.07", "[−0.29, +0.16]")``)."""
    seeds = claim.get("seeds")
    n = int(seeds) if isinstance(seeds, int | float) and math.isfinite(seeds) else None
    return format_estimate(claim.get("effect"), claim.get("ci_low"), claim.get("ci_high"), n)


def epoch_text(claim: dict[str, Any]) -> str:
    """Which epoch of its runs a cell's number comes from (``""`` when the row does not say).

    From the row's ``metric``, ``epochs`` (the arms' schedule lengths) and
    ``epoch_selection`` (``fixed``: the preset's schedule; ``validation``: each tuned arm
    trained for its best validation epoch, chosen without the test split):
    ``"at epoch 15 (final)"``, ``"at epoch 3 of 15"``, ``"over epochs 1–15"``,
    ``"at validation-selected epoch 14 (no_so), 15 (so)"``,
    ``"at epoch 3 of validation-selected 14"``, ``"over epochs 1–14, validation-selected"``.
    """
    epochs = claim.get("epochs")
    if not isinstance(epochs, dict) or not epochs:
        return ""
    metric = str(claim.get("metric") or "")
    tuned = claim.get("epoch_selection") == "validation"
    if metric.startswith("at_epoch:"):
        at = metric.split(":")[1]
        return f"at epoch {at} of {'validation-selected ' if tuned else ''}{arm_epochs(epochs)}"
    if metric.startswith("epochs_to:"):
        return f"over epochs {arm_epochs(epochs, '1–')}" + (", validation-selected"
                                                            if tuned else "")
    if tuned:
        return f"at validation-selected epoch {arm_epochs(epochs)}"
    return f"at epoch {arm_epochs(epochs)} (final)"


def cell_text(claim: dict[str, Any]) -> str:
    """The text of a scorecard cell: ``"−0.07 [−0.29, +0.16] ○ inconclusive at epoch 15
    (final)"`` (the epoch part only when the row records its epochs)."""
    effect, interval = estimate_texts(claim)
    epoch = epoch_text(claim)
    return f"{effect} {interval} {verdict_text(claim['verdict'])}" + (f" {epoch}" if epoch
                                                                       else "")


@dataclass(frozen=True)
class Column:
    """One dataset × tier × protocol column (one per proxy shape ``C``, ``d``)."""

    dataset: str
    tier: str
    protocol: str
    shape: tuple[int, int] | None = None
    #: The regimes of its rows (one, unless the rows do not record their shape).
    regimes: tuple[str, ...] = ()

    @property
    def key(self) -> ColumnKey:
        return self.dataset, self.tier, self.protocol, self.shape

    def lines(self, with_protocol: bool) -> tuple[str, ...]:
        """Header lines: ``icons · frozen``, ``C<d``, ``C = 171, d = 384``, the protocol
        (one line each on pages, joined by `` · `` in Markdown)."""
        lines = [f"{self.dataset} · {self.tier}"]
        if self.regimes:
            lines.append(" / ".join(self.regimes))
        if self.shape:
            lines.append(f"C = {self.shape[0]:,}, d = {self.shape[1]:,}")
        if with_protocol:
            lines.append(self.protocol)
        return tuple(lines)


@dataclass
class Row:
    """One claim (or claims comparing the same thing in other tiers) across the columns."""

    label: str
    paper: str
    unit: str
    #: ``claims.json`` rows by column key.
    cells: dict[ColumnKey, dict[str, Any]] = field(default_factory=dict)

    @property
    def claims(self) -> list[dict[str, Any]]:
        return list(self.cells.values())

    def description(self) -> str:
        """The claim's sentence(s) and notes: the row's tooltip and footnote."""
        by_name: dict[str, list[dict[str, Any]]] = {}
        for claim in self.claims:
            by_name.setdefault(str(claim.get("name") or claim["claim"]), []).append(claim)

        def tiers(rows: list[dict[str, Any]]) -> str:
            return ", ".join(dict.fromkeys(str(r["tier"]) for r in rows))

        sentences = list(dict.fromkeys(str(c["claim"]) for c in self.claims))
        if len(sentences) == 1:
            text = sentences[0]
            if len(by_name) > 1:  # one sentence, several claims (one per tier)
                text += " (" + "; ".join(f"{n}: {tiers(r)}" for n, r in by_name.items()) + ")"
        else:
            text = "; ".join(f"{n} ({tiers(r)}): {r[0]['claim']}" for n, r in by_name.items())
        notes = list(dict.fromkeys(str(c["note"]) for c in self.claims if c.get("note")))
        return text + "".join(f". Note: {n}" for n in notes)


def _group(claims: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Claims grouped into rows: by :func:`comparison_key`, then split (by name, then by
    group, then one row each) wherever two claims of a group would share a cell."""
    splits: list[Callable[[dict[str, Any]], Any]] = [
        comparison_key,
        lambda c: (comparison_key(c), c.get("name")),
        lambda c: (comparison_key(c), c.get("name"), c.get("group")),
    ]

    def split(rows: list[dict[str, Any]], level: int) -> list[list[dict[str, Any]]]:
        keys = [column_key(c) for c in rows]
        if len(set(keys)) == len(keys):
            return [rows]
        if level == len(splits):
            return [[c] for c in rows]
        groups: dict[Any, list[dict[str, Any]]] = {}
        for claim in rows:
            groups.setdefault(splits[level](claim), []).append(claim)
        return [part for g in groups.values() for part in split(g, level + 1)]

    first: dict[Any, list[dict[str, Any]]] = {}
    for claim in claims:
        first.setdefault(comparison_key(claim), []).append(claim)
    return [part for rows in first.values() for part in split(rows, 1)]


@dataclass
class Scorecard:
    """The pivoted scorecard (see the module docstring); build it with :meth:`from_claims`."""

    columns: list[Column]
    rows: list[Row]
    #: Whether any row carries a protocol other than the default (columns then name it).
    with_protocol: bool = False

    @classmethod
    def from_claims(cls, claims: Sequence[dict[str, Any]]) -> Scorecard:
        """The scorecard of ``claims.json``'s rows (an empty list gives an empty table)."""
        claims = list(claims)
        pairs = list(dict.fromkeys((str(c["dataset"]), str(c["tier"])) for c in claims))
        protocols = {protocol_of(c) for c in claims}
        order = [p for p in PROTOCOLS if p in protocols] + sorted(protocols - set(PROTOCOLS))
        columns = []
        for dataset, tier in pairs:
            for protocol in order:
                inside = [c for c in claims if column_key(c)[:3] == (dataset, tier, protocol)]
                for shape in dict.fromkeys(shape_of(c) for c in inside):
                    rows = [c for c in inside if shape_of(c) == shape]
                    regimes = tuple(dict.fromkeys(str(c["regime"]) for c in rows))
                    columns.append(Column(dataset, tier, protocol, shape, regimes))
        rows = []
        for group in _group(claims):
            head = group[0]
            rows.append(Row(label=str(head.get("name") or head["claim"]),
                            paper=str(head["paper"]), unit=str(head.get("unit") or ""),
                            cells={column_key(c): c for c in group}))
        return cls(columns, rows, with_protocol=protocols != {DEFAULT_PROTOCOL})

    # ------------------------------------------------------------------ as table cells

    def header(self) -> list[Cell]:
        """Header cells: the fixed columns, then one per dataset × tier (× protocol)."""
        fixed = [Cell(h) for h in FIXED_HEADER]
        return fixed + [Cell(" · ".join(c.lines(self.with_protocol)),
                             lines=c.lines(self.with_protocol), css=("text",))
                        for c in self.columns]

    def cell(self, row: Row, column: Column) -> Cell:
        """The cell of one row and column: estimate, interval and verdict, or "–"."""
        claim = row.cells.get(column.key)
        if claim is None:
            return Cell(EMPTY, css=("empty",))
        effect, interval = estimate_texts(claim)
        verdict = str(claim["verdict"])
        title = (f"{claim['claim']} — {column.dataset}, {column.tier}, {claim['regime']}: "
                 f"{claim.get('seeds')} seed(s), {claim.get('ci_method') or 'CI over seeds'}")
        if claim.get("note"):
            title += f". Note: {claim['note']}"
        epoch = epoch_text(claim)
        return Cell(cell_text(claim), title=title,
                    css=("estimate-cell", f"verdict-{verdict}"),
                    parts=(("estimate", effect), ("ci", interval),
                           ("verdict", verdict_text(verdict)),
                           *((("epoch", epoch),) if epoch else ())))

    def table_rows(self) -> list[list[Cell]]:
        """Body cells, one list per row."""
        return [[Cell(row.label, title=row.description(), css=("label",)), Cell(row.paper),
                 Cell(row.unit or EMPTY)] + [self.cell(row, column) for column in self.columns]
                for row in self.rows]

    def notes(self) -> list[tuple[str, str]]:
        """Footnotes: every row label with its claim's sentence(s)."""
        return [(row.label, row.description()) for row in self.rows]

    def table(self) -> HtmlTable:
        """The scorecard as a displayable table (HTML and Markdown, with footnotes)."""
        return HtmlTable(self.header(), self.table_rows(), css_class=CSS_CLASS,
                         notes=self.notes())

    def to_html(self) -> str:
        """The scorecard table and its footnotes as HTML (every text escaped)."""
        return self.table().to_html()

    def to_markdown(self) -> str:
        """The scorecard table and its footnotes as GitHub-flavoured Markdown."""
        return self.table().to_markdown()

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.to_markdown()


def legend(csv_link: str | None = "claims.csv", hover: bool = True) -> str:
    """One paragraph saying how to read a cell (Markdown with `code` and links allowed);
    ``hover``: the page has tooltips (HTML), not only footnotes (Markdown)."""
    text = ("Each cell: the effect (treatment − baseline, in the row's unit), its confidence "
            "interval over paired seeds, and the verdict the interval implies — ✓ supported "
            "(the interval lies on the side the paper claims), ✗ contradicted (it lies on the "
            "other side), ○ inconclusive (it holds 0). Decimals follow each interval's width "
            "(its half-width keeps two significant digits). Each cell ends with the epoch "
            "its runs' numbers come from: the preset schedule's final epoch, or the epoch each "
            "tuned arm chose on its validation classes (the test split chose nothing). "
            + ("On the HTML page, hover a claim for its sentence (a cell for its seeds); the "
               "footnotes below list every sentence." if hover else
               "The footnotes below give each claim's sentence."))
    if csv_link:
        text += f" Every row with all its fields: [claims.csv]({csv_link})."
    return text


# ------------------------------------------------------------------------ the flat table

#: Leading columns of ``claims.csv``, then every other field in order of appearance.
CSV_FIRST: tuple[str, ...] = ("name", "claim", "paper", "dataset", "regime", "tier",
                              "protocol", "metric", "unit", "effect", "ci_low", "ci_high",
                              "seeds", "verdict")


def claims_csv(claims: Sequence[dict[str, Any]]) -> str:
    """The long table (one row per claim × dataset × tier) as CSV text.

    Numbers keep their full precision (``repr``), undefined values are empty, a row without
    ``protocol`` is ``preset``.
    """
    rows = [{**c, "protocol": protocol_of(c)} for c in claims]
    seen = dict.fromkeys(k for row in rows for k in row)
    columns = [k for k in CSV_FIRST if k in seen or k == "protocol"]
    columns += [k for k in seen if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def write_claims_csv(study_dir: str | Path, claims: Sequence[dict[str, Any]]) -> Path:
    """Write ``<study_dir>/claims.csv`` (atomically) and return its path."""
    path = Path(study_dir) / "claims.csv"
    atomic_write_text(path, claims_csv(claims))
    return path


def flat_table(claims: Sequence[dict[str, Any]]) -> HtmlTable:
    """The long table for a notebook: one line per claim row, short columns, escaped."""
    protocols = {protocol_of(c) for c in claims} != {DEFAULT_PROTOCOL}
    header = ["claim", "paper", "dataset", "regime", "tier", *(["protocol"] if protocols else []),
              "metric", "epoch", "effect", "CI", "unit", "seeds", "verdict"]
    rows = []
    for c in claims:
        effect, interval = estimate_texts(c)
        rows.append([
            Cell(str(c.get("name") or c["claim"]), title=str(c["claim"])), str(c["paper"]),
            str(c["dataset"]), str(c["regime"]), str(c["tier"]),
            *([protocol_of(c)] if protocols else []), str(c["metric"]),
            epoch_text(c) or EMPTY, effect, interval,
            str(c.get("unit") or ""), str(c.get("seeds")),
            Cell(verdict_text(str(c["verdict"])), css=(f"verdict-{c['verdict']}",)),
        ])
    return HtmlTable(header, rows, css_class="claims-long")
