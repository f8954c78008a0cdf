"""Reading the committed searches: traces, budgets, chosen values, the budget check.

Everything here reads the files a search commits (``results/<study>/tuning/<dataset>/
<group>.<variant>/{space.json, trials.csv, chosen.json}``, docs/tuning.md) and the final
runs of the grid; nothing opens an Optuna journal or trains.

* :func:`trials_frame` — every trial of every search, one row each, with the best value so
  far (what the search traces plot, :func:`dml_study.study.report.tuning_plots.search_traces`);
* :func:`searches_table` — per search: budget, trials counted (COMPLETE + PRUNED), pruned,
  failed, chosen values, chosen epochs, the objective and R@1 at the chosen trial;
* :func:`claim_budgets` — per claim and dataset: the trials of each compared arm and whether
  they are equal (the MLRC rule the study file enforces, checked here on what was run);
* :func:`budget_check_table` and :func:`budget_check_verdicts` — issue #19's budget check:
  do the chosen values and the verdicts move with ``k`` times the trials
  (``tuning.budget_check``, ``results/<study>/tuning-<k>x/``)?

**When do the chosen values "move"?** The larger search continues the committed one
(:mod:`dml_study.study.tune.budget_check`): its first ``n`` trials are the committed
search's. So either its best trial is the committed one (nothing moved: the same values,
the same final runs) or a later trial beat it; then the table gives that trial, the gain in
the objective and each searched value's ratio to the committed one.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dml_study.study.plan.config import StudyConfig, arm_datasets
from dml_study.study.plan.tuned import TUNING_DIRNAME, read_chosen_file, tuning_root

#: Trial states that count toward a search's budget.
COUNTED_STATES: tuple[str, ...] = ("COMPLETE", "PRUNED")

#: Columns of trials.csv that are not searched keys.
TRIAL_COLUMNS: tuple[str, ...] = ("number", "state", "slot", "value", "R@1", "best_epoch",
                                  "run_name", "seconds", "pruned_epoch", "retry_of", "note")


def search_dirs(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> list[Path]:
    """Every search directory (one holding ``space.json``) under ``results/<study>/<dirname>``,
    in path order (dataset, then arm)."""
    root = tuning_root(config, dirname)
    return sorted(p.parent for p in root.glob("*/*/space.json")) if root.is_dir() else []


def _space(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "space.json").read_text(encoding="utf-8"))


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def read_trials(directory: Path) -> pd.DataFrame:
    """One search's ``trials.csv`` (numbers parsed; empty cells NaN); empty when absent."""
    path = Path(directory) / "trials.csv"
    if not path.is_file():
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    for column in frame.columns:
        if column not in ("state", "run_name", "note"):
            parsed = frame[column].map(_number)
            if parsed.notna().any() or (frame[column] == "").all():
                frame[column] = parsed
    frame["number"] = frame["number"].astype(int)
    return frame.sort_values("number", ignore_index=True)


def best_so_far(values: pd.Series, states: pd.Series) -> np.ndarray:
    """The running maximum of the COMPLETE trials' values, in trial order (NaN before the
    first one). A pruned or failed trial has no value and keeps the previous best."""
    out, best = [], float("nan")
    for value, state in zip(values, states, strict=True):
        if state == "COMPLETE" and math.isfinite(value):
            best = value if not math.isfinite(best) else max(best, value)
        out.append(best)
    return np.asarray(out, dtype=float)


def trials_frame(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> pd.DataFrame:
    """Every trial of every search: ``dataset, group, variant, arm, tier, objective, number,
    state, value, best_so_far, pruned, diverged, chosen`` plus trials.csv's other columns."""
    frames = []
    for directory in search_dirs(config, dirname):
        space = _space(directory)
        trials = read_trials(directory)
        if trials.empty:
            continue
        chosen = read_chosen_file(directory) or {}
        trials = trials.assign(
            dataset=space["dataset"], group=space["group"], variant=space["variant"],
            arm=f"{space['group']}/{space['variant']}", tier=space["tier"],
            objective=space.get("objective", "MAP@R"),
            best_so_far=best_so_far(trials["value"], trials["state"]),
            pruned=trials["state"] == "PRUNED",
            diverged=trials["note"].fillna("").str.startswith("diverged"),
            chosen=trials["number"] == chosen.get("trial", -1),
        )
        frames.append(trials)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def searches_table(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> pd.DataFrame:
    """One row per search: ``dataset, arm, tier, budget, trials`` (counted), ``pruned,
    failed, complete``, the chosen ``epochs`` (of the trial's ``trained epochs``), the
    objective and R@1 at the chosen trial, the chosen ``trial`` and its ``values``."""
    rows = []
    for directory in search_dirs(config, dirname):
        space = _space(directory)
        trials = read_trials(directory)
        states = trials["state"].value_counts().to_dict() if len(trials) else {}
        chosen = read_chosen_file(directory) or {}
        counted = sum(int(states.get(s, 0)) for s in COUNTED_STATES)
        rows.append({
            "dataset": space["dataset"], "arm": f"{space['group']}/{space['variant']}",
            "tier": space["tier"], "budget": int(space["budget"]), "trials": counted,
            "pruned": int(states.get("PRUNED", 0)), "failed": int(states.get("FAIL", 0)),
            "complete": counted >= int(space["budget"]),
            "epochs": chosen.get("epochs"), "trained epochs": space.get("epochs"),
            "objective": space.get("objective"), "value": chosen.get("value"),
            "R@1": chosen.get("r_at_1"), "trial": chosen.get("trial"),
            "values": " ".join(f"{k}={_fmt(v)}" for k, v in (chosen.get("params") or {}).items()),
        })
    return pd.DataFrame(rows, columns=["dataset", "arm", "tier", "budget", "trials", "pruned",
                                       "failed", "complete", "epochs", "trained epochs",
                                       "objective", "value", "R@1", "trial", "values"])


def claim_budgets(config: StudyConfig, dirname: str = TUNING_DIRNAME) -> pd.DataFrame:
    """Per claim and dataset with tuned arms: each compared arm's counted trials and whether
    the arms of the claim had equal budgets (``equal``: same budget and same trials done)."""
    searches = searches_table(config, dirname)
    by_arm = {(r["dataset"], r["arm"]): r for r in searches.to_dict("records")}
    rows = []
    for claim in config.claims:
        roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
        for group_name in claim.all_groups:
            source = config.group(group_name).tuned_group
            arms = [f"{source}/{getattr(claim, role)}" for role in roles]
            datasets = dict.fromkeys(d for d, a in by_arm if a in arms)
            for dataset in datasets:
                found = [by_arm.get((dataset, a)) for a in arms]
                rows.append({
                    "claim": claim.name, "dataset": dataset, "group": group_name,
                    "arms": ", ".join(arms),
                    "trials": ", ".join("-" if f is None else str(f["trials"]) for f in found),
                    "budgets": ", ".join("-" if f is None else str(f["budget"]) for f in found),
                    "equal": all(f is not None for f in found) and len(
                        {(f["budget"], f["trials"]) for f in found}) == 1,
                })
    return pd.DataFrame(rows, columns=["claim", "dataset", "group", "arms", "trials", "budgets",
                                       "equal"])


# --------------------------------------------------------------------------- budget check


def budget_check_table(config: StudyConfig) -> pd.DataFrame:
    """Per checked search: the committed choice against the larger budget's.

    Columns ``dataset, arm, trials`` (committed), ``trials (kx)``, ``trial, trial (kx)`` (the
    chosen trial numbers), ``value, value (kx)`` (validation objective), ``epochs, epochs
    (kx)``, ``moved`` (a later trial of the larger search was chosen) and ``changes`` (each
    searched value's ratio, larger over committed). Empty without ``tuning.budget_check``;
    a search not run yet shows NaN in its ``(kx)`` columns.
    """
    check = config.tuning.budget_check if config.tuning is not None else None
    columns = ["dataset", "arm", "trials", "trials (kx)", "trial", "trial (kx)", "value",
               "value (kx)", "epochs", "epochs (kx)", "moved", "changes"]
    if check is None:
        return pd.DataFrame(columns=columns)
    k = f"({check.factor}x)"
    columns = [c.replace("(kx)", k) for c in columns]
    rows = []
    for name in check.arms:
        group, variant = name.split("/", 1)
        arm = config.tuning.arm(name)
        for dataset in check.datasets or arm_datasets(config, arm):
            base = _chosen(config, dataset, group, variant, TUNING_DIRNAME)
            more = _chosen(config, dataset, group, variant, check.dirname)
            moved = None if not (base and more) else more.get("trial") != base.get("trial")
            rows.append({
                "dataset": dataset, "arm": name, "trials": base.get("n_trials"),
                f"trials {k}": more.get("n_trials"), "trial": base.get("trial"),
                f"trial {k}": more.get("trial"), "value": base.get("value"),
                f"value {k}": more.get("value"), "epochs": base.get("epochs"),
                f"epochs {k}": more.get("epochs"), "moved": moved,
                "changes": _changes(base, more) if moved else "",
            })
    return pd.DataFrame(rows, columns=columns)


def _chosen(config: StudyConfig, dataset: str, group: str, variant: str,
            dirname: str) -> dict[str, Any]:
    return read_chosen_file(tuning_root(config, dirname) / dataset / f"{group}.{variant}") or {}


def _changes(base: dict[str, Any], more: dict[str, Any]) -> str:
    """``key ×ratio`` for every numeric chosen value that differs (``key: a → b`` else)."""
    out = []
    for key, value in (more.get("params") or {}).items():
        before = (base.get("params") or {}).get(key)
        if before == value:
            continue
        if isinstance(value, int | float) and isinstance(before, int | float) and before:
            out.append(f"{key} ×{value / before:.2g}")
        else:
            out.append(f"{key}: {before} → {value}")
    if base.get("epochs") != more.get("epochs"):
        out.append(f"epochs: {base.get('epochs')} → {more.get('epochs')}")
    return ", ".join(out)


def budget_check_verdicts(config: StudyConfig) -> pd.DataFrame:
    """Per claim and dataset whose compared arms are all checked: the tuned verdict and
    effect (committed choice) beside those of the larger budget's choice, and whether the
    verdict moved. Reads the final runs of both protocols (``tuned`` and ``tuned-<k>x``)."""
    from dml_study.study.analysis.claims import claim_rows
    from dml_study.study.plan.grid import expand_grid

    check = config.tuning.budget_check if config.tuning is not None else None
    columns = ["claim", "dataset", "tier", "metric", "effect", "CI", "verdict", "effect (kx)",
               "CI (kx)", "verdict (kx)", "moved"]
    if check is None:
        return pd.DataFrame(columns=columns)
    k = f"({check.factor}x)"
    columns = [c.replace("(kx)", k) for c in columns]
    specs = expand_grid(config)
    checked = set(check.arms)
    rows = []
    for claim in config.claims:
        roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
        groups = [g for g in claim.all_groups
                  if {f"{g}/{getattr(claim, r)}" for r in roles} <= checked]
        if not groups:
            continue
        cells = [s for s in specs if s.group in groups]
        base, more = ({(r["dataset"], r["tier"]): r
                       for r in claim_rows(config, claim, protocols=(protocol,), specs=cells)}
                      for protocol in ("tuned", check.protocol))
        for key in dict.fromkeys([*base, *more]):
            a, b = base.get(key, {}), more.get(key, {})
            rows.append({
                "claim": claim.name, "dataset": key[0], "tier": key[1], "metric": claim.metric,
                "effect": a.get("effect"), "CI": _ci(a), "verdict": a.get("verdict"),
                f"effect {k}": b.get("effect"), f"CI {k}": _ci(b),
                f"verdict {k}": b.get("verdict"),
                "moved": None if not (a and b) else a.get("verdict") != b.get("verdict"),
            })
    return pd.DataFrame(rows, columns=columns)


def _ci(row: dict[str, Any]) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None:
        return "–"
    return f"[{low:+.2f}, {high:+.2f}]"
