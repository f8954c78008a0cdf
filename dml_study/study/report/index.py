"""The study's front page, as ``index.html`` and ``README.md`` (same content), and ``summary.json``.

The front page reads top to bottom as a reader wants it: the claims scorecard
(:mod:`~dml_study.study.report.scorecard`, from ``claims.json`` when the study wrote one; the
long table is written beside it as ``claims.csv``), the figures listed in
``figures/index.json``, the headline table, then links to every notebook page and every run
page. Every number carries its unit; tables have no pandas index rows and every cell is
escaped (:mod:`~dml_study.study.report.markup`). The pages are self-contained
(:mod:`dml_study.study.report.pages`) and name paths as the reader finds them: relative to
the project, never the staging directory (:mod:`~dml_study.study.report.paths`).

The headline is the paired comparison of the study's headline group (by default Proxy
Anchor with vs without SO over all its seeds): mean ± std of each headline metric per
arm, the mean paired difference with a t interval and a bootstrap interval, and the
paired t-test's p-value. It is computed from the finished runs, independently of the
notebooks, so the index is right even if a notebook is edited.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dml_study.atomic_io import atomic_write_text
from dml_study.study.analysis.collect import grid_results
from dml_study.study.analysis.stats import compare_arms, format_estimate, format_mean_std
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import expand_grid, headline_protocol, unique_runs
from dml_study.study.report import scorecard as scorecards
from dml_study.study.report.markup import (
    CellLike,
    html_notes,
    html_table,
    markdown_notes,
    markdown_table,
)
from dml_study.study.report.pages import page, render_html
from dml_study.study.report.paths import path_replacements
from dml_study.study.report.tables import run_page
from dml_study.study.tiers.machine_paths import relativise_notebook, relativise_text


@dataclass
class NotebookRecord:
    """One executed notebook of the study."""

    notebook: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    html: str | None = None
    error: str | None = None
    #: The failure itself (not serialised), so the runner can re-raise it.
    exception: Exception | None = field(default=None, repr=False, compare=False)


@dataclass
class StudyRecord:
    """What a study run did; written as ``summary.json`` next to the index."""

    name: str
    title: str
    notebooks: list[NotebookRecord] = field(default_factory=list)
    seconds: float = 0.0
    headline: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)


def headline(config: StudyConfig) -> dict[str, Any] | None:
    """Headline comparison from the finished runs (``None`` when the arms have no runs)."""
    if not config.groups:
        return None
    spec = config.headline
    group = [s for s in expand_grid(config) if s.group == spec.group]
    if not group:
        return None
    # One dataset (the group's first) and one protocol: the group's tuned cells when it has
    # them (the equal-budget protocol), else its preset ones. Never a mix, which would pair
    # two runs per seed and arm.
    dataset = group[0].dataset
    group = [s for s in group if s.dataset == dataset]
    for protocol in dict.fromkeys((headline_protocol(config), "preset")):
        frame = grid_results([s for s in group if s.protocol == protocol], config.results_dir)
        if not frame.empty and {spec.baseline, spec.treatment} <= set(frame["variant"]):
            break
    else:
        return None
    metrics = [m for m in spec.metrics if m in frame.columns]
    comparison = compare_arms(
        frame,
        "variant",
        spec.baseline,
        spec.treatment,
        metrics,
        confidence=config.stats.confidence,
        n_resamples=config.stats.bootstrap_resamples,
        seed=config.stats.seed,
    )
    return {
        "group": spec.group,
        "baseline": spec.baseline,
        "treatment": spec.treatment,
        "dataset": dataset,
        "protocol": protocol,
        "confidence": config.stats.confidence,
        "metrics": {m: _clean(comparison.loc[m].to_dict()) for m in metrics},
    }


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def headline_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The headline as a display table, one row per metric (column ``metric``, no index).

    Means ± std in %, the paired difference and its intervals in percentage points, with
    the decimals each interval's width needs
    (:func:`~dml_study.study.analysis.stats.format_estimate`).
    """
    rows = []
    level = round(100 * summary["confidence"])
    for metric, c in summary["metrics"].items():
        n = int(c["n"])
        delta, t_ci = format_estimate(_pp(c["mean_difference"]), _pp(c["t_ci_low"]),
                                      _pp(c["t_ci_high"]), n)
        _, bootstrap_ci = format_estimate(_pp(c["mean_difference"]),
                                          _pp(c["bootstrap_ci_low"]),
                                          _pp(c["bootstrap_ci_high"]), n)
        rows.append({
            "metric": metric,
            f"{summary['baseline']} (%, mean ± std)": format_mean_std(
                c["baseline_mean"], _nan(c["baseline_std"])),
            f"{summary['treatment']} (%, mean ± std)": format_mean_std(
                c["treatment_mean"], _nan(c["treatment_std"])),
            "Δ (pp)": delta,
            f"{level}% t CI (pp)": t_ci,
            f"{level}% bootstrap CI (pp)": bootstrap_ci,
            "paired t p": "–" if c["p_value"] is None else f"{c['p_value']:.3f}",
            "seeds": n,
        })
    return pd.DataFrame(rows)


def _pp(value: float | None) -> float | None:
    """A fraction in percentage points (``None`` stays undefined)."""
    return None if value is None else 100 * value


#: The CSS class of the headline table (the page check finds it by this class).
HEADLINE_CSS_CLASS = "headline"

CLAIM_KEYS = ("claim", "paper", "dataset", "regime", "tier", "metric", "unit", "effect",
              "ci_low", "ci_high", "seeds", "verdict")
VERDICTS = ("supported", "contradicted", "inconclusive")


def load_claims(study_dir: Path) -> list[dict[str, Any]] | None:
    """The claims scorecard ``<study_dir>/claims.json`` (``None`` when there is none).

    Raises ``ValueError`` naming the file and the entry when it does not follow the schema
    (a list of objects with the keys in :data:`CLAIM_KEYS`, optional ``note``).
    """
    path = Path(study_dir) / "claims.json"
    if not path.is_file():
        return None
    try:
        claims = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the notebook that "
                         "writes it (05_results)") from exc
    if not isinstance(claims, list):
        raise ValueError(f"{path} must hold a JSON list of claims, not {type(claims).__name__}")
    for index, claim in enumerate(claims):
        missing = [k for k in CLAIM_KEYS if not isinstance(claim, dict) or k not in claim]
        if missing:
            raise ValueError(f"{path}: claim {index} lacks {', '.join(missing)}")
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"{path}: claim {index} has verdict {claim['verdict']!r}; "
                             f"expected one of {', '.join(VERDICTS)}")
    return claims


def load_figures(study_dir: Path) -> list[dict[str, str]]:
    """Figures listed in ``<study_dir>/figures/index.json`` (empty when there is none).

    Each entry is ``{"file": "figures/<name>.png", "title": ..., "caption": ...}`` with the
    file relative to the study directory; a listed file that does not exist is an error.
    """
    path = Path(study_dir) / "figures" / "index.json"
    if not path.is_file():
        return []
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run 05_results") from exc
    if not isinstance(figures, list):
        raise ValueError(f"{path} must hold a JSON list of figures")
    for index, figure in enumerate(figures):
        if not isinstance(figure, dict) or not {"file", "title"} <= set(figure):
            raise ValueError(f"{path}: figure {index} needs keys 'file' and 'title'")
        file = Path(figure["file"])
        if file.is_absolute() or ".." in file.parts:
            raise ValueError(f"{path}: figure {index} file {figure['file']!r} must be relative "
                             "to the study directory (e.g. figures/x.png)")
        if not (Path(study_dir) / file).is_file():
            raise ValueError(f"{path}: figure {index} lists {figure['file']}, which does not "
                             "exist; re-run the notebook that draws it")
    return [{"file": f["file"], "title": f["title"], "caption": f.get("caption", "")}
            for f in figures]


def frame_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame``'s columns (the index is not shown)."""
    return markdown_table(list(map(str, frame.columns)),
                          [[str(v) for v in row] for row in frame.itertuples(index=False)])


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def write_reports(config: StudyConfig, record: StudyRecord, *, html: bool = True,
                  published: bool = True) -> tuple[Path, Path]:
    """Write ``summary.json``, ``README.md``, ``index.html`` (and ``claims.csv``) into the
    study directory.

    First every executed notebook of the study (``*.ipynb`` and ``runs/*.ipynb``) is
    rewritten without absolute machine paths and, with ``html``, rendered to a
    self-contained page beside it, so the index can link every run's page. With
    ``published`` (a study that succeeded) paths into the staging directory are written as
    the published directory (:func:`~dml_study.study.report.paths.path_replacements`);
    a failed attempt's report, which stays in staging, keeps naming it.
    """
    out = config.study_dir
    out.mkdir(parents=True, exist_ok=True)
    render_study_pages(config, html=html, published=published)
    claims = load_claims(out)
    if claims is not None:
        scorecards.write_claims_csv(out, claims)
    atomic_write_text(out / "summary.json",
                      json.dumps(_record_dict(record), indent=2, default=str) + "\n")
    sections = _sections(config, record)
    readme = out / "README.md"
    atomic_write_text(readme, _markdown(record, sections))
    index = out / "index.html"
    atomic_write_text(index, _html(record, sections))
    return readme, index


def render_study_pages(config: StudyConfig, html: bool = True, published: bool = True
                       ) -> list[Path]:
    """Relativise every executed notebook of the study and render it (returns the pages).

    Study notebooks get a page ``<name>.html``, runs ``runs/<run>.html``; each links back
    to the index. Every page is rendered again (about a second each), so pages always
    come from the current notebook and the current renderer. Paths in the notebooks
    (outputs and metadata) and in the study's JSON and logs are written as a reader finds
    them: relative to the project, the staging directory as the published one (with
    ``published``; :mod:`~dml_study.study.report.paths`).
    """
    out = config.study_dir
    pages = []
    prune_stale_runs(config)
    replacements = path_replacements(config) if published else []
    # Launcher records (launch.json) and per-run logs name paths too: written relatively.
    for path in [*out.glob("*.json"), *out.glob("runs/*.log")]:
        text = path.read_text(encoding="utf-8", errors="replace")
        relative = relativise_text(text, config.root, replacements)
        if relative != text:
            atomic_write_text(path, relative)
    for notebook in [*sorted(out.glob("*.ipynb")), *sorted(out.glob("runs/*.ipynb"))]:
        relativise_notebook(notebook, config.root, replacements)
        if not html:
            continue
        page = notebook.with_suffix(".html")
        back = "index.html" if notebook.parent == out else "../index.html"
        render_html(notebook, page, back_link=back)
        pages.append(page)
    return pages


def prune_stale_runs(config: StudyConfig) -> list[Path]:
    """Remove ``runs/<run>.{ipynb,html,log}`` of runs that are not in the study's grid.

    The study directory starts as a copy of the previous results; a run whose config (and
    so name) changed would otherwise leave its old executed notebook and page beside the
    new ones. Returns the removed files.
    """
    current = {s.run_name for s in unique_runs(expand_grid(config))}
    stale = [path for path in sorted((config.study_dir / "runs").glob("*"))
             if path.suffix in (".ipynb", ".html", ".log") and path.stem not in current]
    for path in stale:
        path.unlink()
    return stale


def _record_dict(record: StudyRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "title": record.title,
        "seconds": round(record.seconds, 1),
        "notebooks": [
            {k: v for k, v in vars(n).items() if k != "exception"} for n in record.notebooks
        ],
        "headline": record.headline,
        "environment": record.environment,
    }


def runs_table(config: StudyConfig) -> pd.DataFrame:
    """Every run of the grid: the cells it serves and its R@1 / MAP@R (%), or "missing"."""
    specs = expand_grid(config)
    frame = grid_results(specs, config.results_dir)
    metrics = frame.drop_duplicates("run_name").set_index("run_name") if len(frame) else frame
    rows = []
    for run in dict.fromkeys(s.run_name for s in specs):
        cells = sorted({f"{s.group}/{s.variant}" for s in specs if s.run_name == run})
        row = {"run": run, "grid cells": ", ".join(cells)}
        for metric in ("R@1", "MAP@R"):
            finished = run in metrics.index and metric in metrics.columns
            row[metric] = f"{100 * metrics.loc[run, metric]:.1f}" if finished else "missing"
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "grid cells", "R@1", "MAP@R"])


@dataclass
class _Section:
    """One part of the index, rendered both as Markdown and as HTML."""

    title: str | None = None
    text: list[str] = field(default_factory=list)  # paragraphs; `code` and [a](b) allowed
    header: list[CellLike] = field(default_factory=list)
    rows: list[list[CellLike]] = field(default_factory=list)
    #: The table's CSS class (the page check finds ``scorecard`` and ``headline`` by it).
    css_class: str | None = None
    #: Footnotes below the table: ``(term, text)``.
    notes: list[tuple[str, str]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    pre: str | None = None
    failed: bool = False


def _sections(config: StudyConfig, record: StudyRecord) -> list[_Section]:
    out = config.study_dir
    sections: list[_Section] = []
    if config.description:
        sections.append(_Section(text=[config.description.strip()]))
    claims = load_claims(out)
    if claims is not None:
        card = scorecards.Scorecard.from_claims(claims)
        sections.append(_Section(
            "Claims", [
                "Each claim of the papers as tested here, one row per claim and one column "
                "per dataset and tier.", scorecards.legend("claims.csv")],
            card.header(), card.table_rows(), css_class=scorecards.CSS_CLASS,
            notes=card.notes()))
    figures = load_figures(out)
    if figures:
        sections.append(_Section("Figures", figures=figures))
    ran = {nb.notebook: nb for nb in record.notebooks}
    notebooks = [*ran, *(n for n in config.notebooks if n not in ran and (out / n).is_file())]
    headline_section = _Section("Headline", [_headline_text(config, record.headline)])
    if record.headline:
        table = headline_table(record.headline)
        headline_section.header = list(map(str, table.columns))
        headline_section.rows = [[str(v) for v in row] for row in table.itertuples(index=False)]
        headline_section.css_class = HEADLINE_CSS_CLASS
    else:
        headline_section.text.append("(no finished runs for the headline comparison yet)")
    sections.append(headline_section)
    sections.append(_Section(
        "Notebooks", ["Each notebook as executed for this study, rendered and as `.ipynb`."],
        ["notebook", "status", "time", "executed notebook"],
        [_notebook_row(out, name, ran.get(name)) for name in notebooks]))
    runs = runs_table(config) if config.groups else pd.DataFrame()
    if len(runs):
        sections.append(_Section(
            "Training runs",
            ["Each grid run with the cells it serves and its test metrics (%); the name "
             "links to the run's executed `02_train` notebook (curves, proxy heatmaps) when "
             "this study trained it."],
            ["run", "grid cells", "R@1 (%)", "MAP@R (%)"],
            [[_run_cell(out, run), cells, r1, mapr]
             for run, cells, r1, mapr in runs.itertuples(index=False)]))
    for nb in record.notebooks:
        if nb.error:
            sections.append(_Section(f"{nb.notebook} failed", pre=nb.error, failed=True))
    env = record.environment
    sections.append(_Section("Environment", [
        f"Wall time: {record.seconds / 60:.1f} min.",
        f"Commit `{env.get('git_commit')}`, device `{env.get('device')}`, "
        f"torch {env.get('torch')}, {env.get('threads')} threads"
        + (f", CPU {env['cpu']}" if env.get("cpu") else "")
        + (f", numerical profile `{env['profile']}`" if env.get("profile") else "") + ".",
        *(f"Not pinned on this CPU: {u}." for u in env.get("unsupported") or ()),
        f"Regenerate with `python -m dml_study.study --config {_config_name(config)}`.",
    ]))
    return sections


def _notebook_row(study_dir: Path, name: str, nb: NotebookRecord | None
                  ) -> list[CellLike]:
    """A notebook of this run of the study, or one executed by an earlier run (``--only``)."""
    page = Path(name).with_suffix(".html").name
    if nb is not None:
        title: CellLike = (name.removesuffix(".ipynb"), nb.html) if nb.html else name
        status, time = nb.status, f"{nb.seconds:.0f} s"
    else:
        exists = (study_dir / page).is_file()
        title = (name.removesuffix(".ipynb"), page) if exists else name
        status, time = "earlier run", "–"
    executed: CellLike = (name, name) if (study_dir / name).is_file() else "–"
    return [title, status, time, executed]


def _run_cell(study_dir: Path, run: str) -> CellLike:
    link = run_page(study_dir, run)
    return (run, link) if link else run


def _headline_text(config: StudyConfig, result: dict[str, Any] | None = None) -> str:
    spec = config.headline
    protocol = (result or {}).get("protocol") or headline_protocol(config)
    arms = ("each arm at its tuned values" if protocol == "tuned"
            else "both arms at the preset's values")
    return (
        f"Group `{spec.group}`, `{spec.treatment}` vs `{spec.baseline}` ({protocol} protocol: "
        f"{arms}), paired over seeds (values in %, Δ and intervals in percentage points)."
    )


def _config_name(config: StudyConfig) -> str:
    if config.source is None:
        return "<study.yaml>"
    try:
        return str(config.source.relative_to(config.root))
    except ValueError:
        return str(config.source)


def _markdown(record: StudyRecord, sections: list[_Section]) -> str:
    lines = [f"# {record.title or record.name}", ""]
    for section in sections:
        if section.title:
            lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        if section.header:
            lines += [markdown_table(section.header, section.rows), ""]
        if section.notes:
            lines += [markdown_notes(section.notes), ""]
        for figure in section.figures:
            lines += [f"### {figure['title']}", "", f"![{figure['title']}]({figure['file']})", ""]
            if figure["caption"]:
                lines += [figure["caption"], ""]
        if section.pre is not None:
            lines += ["```", section.pre, "```", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    """Escape ``text``, then turn `code` and [text](link) into HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", out)


def _html(record: StudyRecord, sections: list[_Section]) -> str:
    title = record.title or record.name
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        if section.title:
            css = " class='failed'" if section.failed else ""
            parts.append(f"<h2{css}>{html.escape(section.title)}</h2>")
        parts += [f"<p>{_inline_html(p)}</p>" for p in section.text]
        if section.header:
            parts.append(html_table(section.header, section.rows, css_class=section.css_class))
        if section.notes:
            parts.append(html_notes(section.notes))
        for figure in section.figures:
            caption = html.escape(figure["caption"])
            parts.append(
                f"<figure><h3>{html.escape(figure['title'])}</h3>"
                f"<img src='{html.escape(figure['file'])}' alt='{html.escape(figure['title'])}'>"
                + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>"
            )
        if section.pre is not None:
            parts.append(f"<pre>{html.escape(section.pre)}</pre>")
    return page(title, "\n".join(parts))


def load_record(config: StudyConfig) -> StudyRecord:
    """The :class:`StudyRecord` of the study's last run, from its ``summary.json``."""
    path = config.study_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the study first "
                                f"(python -m dml_study.study --config {_config_name(config)})")
    data = json.loads(path.read_text(encoding="utf-8"))
    fields = set(NotebookRecord.__dataclass_fields__) - {"exception"}
    return StudyRecord(
        name=data["name"], title=data.get("title", data["name"]),
        notebooks=[NotebookRecord(**{k: v for k, v in n.items() if k in fields})
                   for n in data.get("notebooks", [])],
        seconds=float(data.get("seconds", 0.0)), headline=headline(config),
        environment=data.get("environment", {}),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m dml_study.study.report.index --config studies/x.yaml``: render the report again.

    Re-renders every page and the index from the executed notebooks and finished runs
    already on disk (nothing is executed), e.g. after a change to the report's code.
    """
    import argparse

    from dml_study.study.plan.config import load_study_config

    parser = argparse.ArgumentParser(prog="python -m dml_study.study.report.index",
                                     description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the study file")
    args = parser.parse_args(argv)
    config = load_study_config(args.config)
    _readme, index = write_reports(config, load_record(config))
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
