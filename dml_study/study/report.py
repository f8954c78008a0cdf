"""The study's front page: headline numbers and links, as ``README.md`` and ``index.html``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dml_study.atomic_io import atomic_write_text
from dml_study.study.collect import grid_results
from dml_study.study.config import StudyConfig
from dml_study.study.grid import expand_grid
from dml_study.study.stats import compare_arms, format_mean_std


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
    specs = [s for s in expand_grid(config) if s.group == spec.group]
    frame = grid_results(specs, config.results_dir)
    if frame.empty or not {spec.baseline, spec.treatment} <= set(frame["variant"]):
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
        "confidence": config.stats.confidence,
        "metrics": {m: _clean(comparison.loc[m].to_dict()) for m in metrics},
    }


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def headline_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The headline as a display table (percent; one row per metric)."""
    rows = []
    level = round(100 * summary["confidence"])
    for metric, c in summary["metrics"].items():
        rows.append({
            "metric": metric,
            f"{summary['baseline']} (mean ± std)": format_mean_std(
                c["baseline_mean"], _nan(c["baseline_std"])),
            f"{summary['treatment']} (mean ± std)": format_mean_std(
                c["treatment_mean"], _nan(c["treatment_std"])),
            "Δ (pp)": _signed(c["mean_difference"]),
            f"{level}% t CI": _interval(c["t_ci_low"], c["t_ci_high"]),
            f"{level}% bootstrap CI": _interval(c["bootstrap_ci_low"], c["bootstrap_ci_high"]),
            "paired t p": "–" if c["p_value"] is None else f"{c['p_value']:.3f}",
            "seeds": int(c["n"]),
        })
    return pd.DataFrame(rows).set_index("metric")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index as the first column)."""
    index_name = frame.index.name or ""
    header = [str(index_name), *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _interval(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "–"
    return f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def write_reports(config: StudyConfig, record: StudyRecord) -> tuple[Path, Path]:
    """Write ``summary.json``, ``README.md`` and ``index.html`` into the study directory."""
    out = config.study_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(_record_dict(record), indent=2, default=str))
    readme = out / "README.md"
    atomic_write_text(readme, _markdown(config, record))
    index = out / "index.html"
    atomic_write_text(index, _html(config, record))
    return readme, index


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


def _headline_text(config: StudyConfig, record: StudyRecord) -> str:
    spec = config.headline
    return (
        f"Headline: group `{spec.group}`, `{spec.treatment}` vs `{spec.baseline}`, "
        "paired over seeds (values in %, Δ in percentage points)."
    )


def _markdown(config: StudyConfig, record: StudyRecord) -> str:
    lines = [f"# {record.title or record.name}", ""]
    if config.description:
        lines += [config.description.strip(), ""]
    lines += [_headline_text(config, record), ""]
    if record.headline:
        lines += [markdown_table(headline_table(record.headline)), ""]
    else:
        lines += ["(no finished runs for the headline comparison yet)", ""]
    lines += ["## Notebooks", "", "| notebook | status | time | rendered |", "|---|---|---|---|"]
    for nb in record.notebooks:
        rendered = f"[{nb.html}]({nb.html})" if nb.html else "–"
        lines.append(
            f"| [{nb.notebook}]({nb.notebook}) | {nb.status} | {nb.seconds:.0f} s | {rendered} |"
        )
    runs = runs_table(config) if config.groups else pd.DataFrame()
    if len(runs):
        lines += ["", "## Training runs", "",
                  "Each run's executed `02_train` notebook is in `runs/`.", "",
                  "| run | grid cells | R@1 | MAP@R |", "|---|---|---|---|"]
        for run, cells, r1, mapr in runs.itertuples(index=False):
            lines.append(f"| [{run}](runs/{run}.ipynb) | {cells} | {r1} | {mapr} |")
    failed = [nb for nb in record.notebooks if nb.error]
    for nb in failed:
        lines += ["", f"**{nb.notebook} failed:**", "", "```", nb.error or "", "```"]
    env = record.environment
    lines += [
        "",
        f"Wall time: {record.seconds / 60:.1f} min. Executed copies of every training run: "
        "[runs/](runs/).",
        "",
        f"Environment: commit `{env.get('git_commit')}`, device `{env.get('device')}`, "
        f"torch {env.get('torch')}, {env.get('threads')} threads.",
        "",
        f"Regenerate with `python -m dml_study.study --config {_config_name(config)}`.",
        "",
    ]
    return "\n".join(lines)


def _config_name(config: StudyConfig) -> str:
    if config.source is None:
        return "<study.yaml>"
    try:
        return str(config.source.relative_to(config.root))
    except ValueError:
        return str(config.source)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.5; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { background: #f5f5f5; padding: 0.1rem 0.3rem; }
.failed { color: #b00020; }
"""


def _html(config: StudyConfig, record: StudyRecord) -> str:
    esc = html.escape
    title = esc(record.title or record.name)
    parts = [
        "<!DOCTYPE html>",
        f"<html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    if config.description:
        parts.append(f"<p>{esc(config.description.strip())}</p>")
    parts.append(f"<p>{esc(_headline_text(config, record)).replace('`', '')}</p>")
    if record.headline:
        parts.append(headline_table(record.headline).to_html(border=0))
    else:
        parts.append("<p>(no finished runs for the headline comparison yet)</p>")
    parts.append("<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th>"
                 "<th>time</th><th>rendered</th></tr>")
    for nb in record.notebooks:
        rendered = f"<a href='{esc(nb.html)}'>{esc(nb.html)}</a>" if nb.html else "–"
        status = f"<span class='failed'>{esc(nb.status)}</span>" if nb.error else esc(nb.status)
        parts.append(
            f"<tr><td><a href='{esc(nb.notebook)}'>{esc(nb.notebook)}</a></td><td>{status}</td>"
            f"<td>{nb.seconds:.0f} s</td><td>{rendered}</td></tr>"
        )
    parts.append("</table>")
    runs = runs_table(config) if config.groups else pd.DataFrame()
    if len(runs):
        parts.append("<h2>Training runs</h2><p>Executed <code>02_train</code> notebook of each "
                     "run:</p><table><tr><th>run</th><th>grid cells</th><th>R@1</th>"
                     "<th>MAP@R</th></tr>")
        for run, cells, r1, mapr in runs.itertuples(index=False):
            parts.append(f"<tr><td><a href='runs/{esc(run)}.ipynb'>{esc(run)}</a></td>"
                         f"<td>{esc(cells)}</td><td>{esc(r1)}</td><td>{esc(mapr)}</td></tr>")
        parts.append("</table>")
    for nb in record.notebooks:
        if nb.error:
            parts.append(f"<h3 class='failed'>{esc(nb.notebook)} failed</h3>"
                         f"<pre>{esc(nb.error)}</pre>")
    env = record.environment
    parts.append(
        f"<p>Wall time: {record.seconds / 60:.1f} min. Executed copies of every training run: "
        f"<a href='runs/'>runs/</a>.</p>"
        f"<p>Environment: commit <code>{esc(str(env.get('git_commit')))}</code>, device "
        f"<code>{esc(str(env.get('device')))}</code>, torch {esc(str(env.get('torch')))}, "
        f"{esc(str(env.get('threads')))} threads.</p>"
        f"<p>Regenerate with <code>python -m dml_study.study --config "
        f"{esc(_config_name(config))}</code>.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
