r"""The claims scorecard: every claim of the two papers as a measured effect with a 95 % CI.

The study file's ``claims:`` section (:class:`~dml_study.study.plan.config.ClaimConfig`) names,
per claim, a group of the grid, its baseline and treatment variants, the quantity compared
(:func:`run_value`) and the direction the paper claims. :func:`scorecard` turns every claim
into one row per dataset and protocol of its group:

- ``kind: paired`` — runs of the two variants are paired by seed (same seed: same data order,
  same initial head and proxies); the effect is the mean over seeds of
  ``scale · (treatment − baseline)`` with a paired Student-t CI
  (:func:`dml_study.study.analysis.stats.paired_comparison`; the percentile bootstrap CI is kept
  beside it);
- ``kind: correlation`` — per baseline run, a per-class Spearman ρ (SO paper's motivation:
  nearest-other-proxy cosine vs that class's train R@1); the effect is the mean ρ over seeds
  with a t-CI;
- ``kind: robustness`` — per seed, a statistic of each arm's whole lr grid (the number of
  grid lrs within δ pp of the arm's own best, or the mean drop from it,
  :mod:`dml_study.study.analysis.robustness`), paired by seed like ``paired``.

**Protocols.** A group with ``protocols: [preset, tuned]`` gives one row per protocol
(``"protocol"``): ``preset`` rows come from the variants as written, ``tuned`` rows from the
final runs of the tuned arms (:mod:`dml_study.study.plan.tuned`), the only runs evaluated on
the test split with tuned values. Every row says which epoch its numbers come from
(:func:`epoch_label`): ``"epoch": "final"`` (the last epoch of the preset schedule) or
``"final = validation-selected N"`` (the last epoch of the tuned N-epoch schedule, N the
tuned arm's best validation epoch), with ``"epochs": {variant: N}`` and
``"epoch_selection": "fixed" | "validation"``; tuned rows add ``"trials": {variant: n}`` (the
trials behind each arm's values).

The verdict follows the CI (:func:`dml_study.study.analysis.stats.verdict_from_ci`):
``inconclusive`` exactly when the CI holds 0. Every row names its dataset, regime (``C<d``:
the proxies can be orthogonal; ``C>>d``: the SO floor :math:`C^2/d - C` binds), tier and
protocol.
:func:`write_claims` writes ``results/<study>/claims.json`` (a JSON list; the report renders
it first).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dml_study.atomic_io import atomic_write_json
from dml_study.study.analysis.stats import (
    format_estimate,
    mean_ci,
    paired_comparison,
    verdict_from_ci,
)
from dml_study.study.plan.config import ClaimConfig, StudyConfig
from dml_study.study.plan.grid import RunSpec, expand_grid, resolved_config
from dml_study.training.run_dir import RunDirectory

#: Final metrics reported in percentage points.
RETRIEVAL_METRICS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI")


class ClaimError(ValueError):
    """A claim's metric that cannot be computed; the message names the metric and the fix."""


# --------------------------------------------------------------------------- per-run values


def regime(num_classes: int, dim: int) -> str:
    """``"C<d"`` (C ≤ d: orthogonal proxies possible), ``"C>>d"`` (C ≥ 4d: the SO floor
    C²/d − C binds hard) or ``"C>d"`` (in between)."""
    if num_classes <= dim:
        return "C<d"
    return "C>>d" if num_classes >= 4 * dim else "C>d"


def run_shape(path: Path) -> tuple[int, int]:
    """``(C, d)`` of a run's final proxies."""
    return tuple(np.load(path / "proxies.npy", mmap_mode="r").shape)  # type: ignore[return-value]


def _history(path: Path) -> pd.DataFrame:
    from dml_study.study.analysis.collect import load_history

    history = load_history(path)
    if history.empty or "epoch" not in history.columns:
        raise ClaimError(f"{path}: no per-epoch history (history.csv/json) for a convergence claim")
    return history.sort_values("epoch")


def epochs_to_fraction(history: pd.DataFrame, fraction: float, metric: str = "R@1") -> float:
    """First epoch at which ``metric`` has gained ``fraction`` of its total gain.

    Gain is measured from epoch 0 (the untrained model) to the last epoch:
    the first epoch ``e ≥ 1`` with ``m_e − m_0 ≥ fraction · (m_last − m_0)``. A run that
    gains nothing has no such epoch (NaN): "90 % of the final value" would be reached before
    training even starts, since training moves R@1 by a few points only.
    """
    rows = history.dropna(subset=[metric])
    if len(rows) < 2:
        return float("nan")
    values = rows[metric].to_numpy(dtype=float)
    epochs = rows["epoch"].to_numpy()
    gain = values[-1] - values[0]
    if not gain > 0:
        return float("nan")
    reached = np.flatnonzero(values[1:] - values[0] >= fraction * gain)
    return float(epochs[1:][reached[0]])


def run_value(path: Path, metric: str) -> float:
    """The quantity ``metric`` of one finished run (fractions, not yet scaled).

    - ``R@1``, ``MAP@R``, ... — final metrics (``metrics.json``);
    - ``proxies/<stat>`` — :func:`dml_study.losses.orthogonality_stats` of the final
      proxies (``mean_abs_cos``, ``max_abs_cos``, ``effective_rank``, ``so_frobenius``);
      ``proxies/close_classes@<t>`` — fraction of classes whose nearest other proxy has
      cosine above t;
    - ``epochs_to:<fraction>:<metric>`` — :func:`epochs_to_fraction`;
    - ``at_epoch:<e>:<metric>`` — the metric after epoch e (history).
    """
    from dml_study.study.analysis import per_class
    from dml_study.study.analysis.collect import load_metrics

    path = Path(path)
    if metric.startswith("proxies/"):
        stat = metric.split("/", 1)[1]
        proxies = np.load(path / "proxies.npy")
        if stat.startswith("close_classes@"):
            return per_class.close_class_fraction(proxies, float(stat.split("@", 1)[1]))
        stats = per_class.orthogonality_summary(proxies)
        if stat not in stats:
            raise ClaimError(f"unknown proxy statistic {stat!r}; valid: {sorted(stats)}, "
                             "close_classes@<threshold>")
        return float(stats[stat])
    if metric.startswith("epochs_to:"):
        _, fraction, name = metric.split(":", 2)
        return epochs_to_fraction(_history(path), float(fraction), name)
    if metric.startswith("at_epoch:"):
        _, epoch, name = metric.split(":", 2)
        history = _history(path)
        row = history[history["epoch"] == int(epoch)]
        if row.empty or name not in row.columns:
            raise ClaimError(f"{path}: no {name} after epoch {epoch} in the history")
        return float(row[name].iloc[0])
    metrics = load_metrics(path)
    if metric not in metrics:
        raise ClaimError(f"{path}: metric {metric!r} not in metrics.json; has {sorted(metrics)}")
    return float(metrics[metric])


def motivation_rho(path: Path) -> float:
    """Spearman ρ over training classes: nearest-other-proxy cosine vs the class's train R@1.

    Needs ``train_class_recall.npy``: written by frozen-tier runs, and by fine-tuned runs
    with ``eval.train_class_recall: true``.
    """
    from scipy.stats import ConstantInputWarning, spearmanr

    from dml_study.study.analysis.per_class import class_motivation

    file = Path(path) / "train_class_recall.npy"
    if not file.is_file():
        raise ClaimError(f"{file} is missing: per-class train R@1 is recorded by frozen-tier "
                         "runs and by fine-tuned runs with eval.train_class_recall: true; put "
                         "the motivation claim on such a group (overrides: "
                         "{eval.train_class_recall: true} in its base)")
    table = class_motivation(np.load(Path(path) / "proxies.npy"), np.load(file))
    with warnings.catch_warnings():  # constant input: ρ is NaN, reported as undefined
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(table["nearest_proxy_cos"], table["train_R@1"]).statistic)


# --------------------------------------------------------------------------- scorecard


def _finished(results_dir: Path, spec: RunSpec) -> Path | None:
    run = RunDirectory.for_run(results_dir, spec.run_name)
    return run.path if run.is_finished() else None


def _values(
    results_dir: Path, specs: list[RunSpec], metric: str, kind: str
) -> tuple[dict[int, float], list[int]]:
    """Finite values of finished runs by seed, and the seeds whose value is undefined (NaN:
    e.g. a Spearman ρ over a constant per-class R@1)."""
    out: dict[int, float] = {}
    undefined: list[int] = []
    for spec in specs:
        path = _finished(results_dir, spec)
        if path is None:
            continue
        value = motivation_rho(path) if kind == "correlation" else run_value(path, metric)
        if math.isfinite(value):
            out[spec.seed] = value
        else:
            undefined.append(spec.seed)
    return out, undefined


def _number(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


#: Protocols of the scorecard (``claims.json``): the tuned protocol and the preset beside it.
#: The budget check's ``tuned-<k>x`` rows are reported by
#: :func:`dml_study.study.analysis.tuning.budget_check_table`, not in the scorecard.
SCORECARD_PROTOCOLS: tuple[str, ...] = ("preset", "tuned")


def claim_rows(config: StudyConfig, claim: ClaimConfig,
               protocols: tuple[str, ...] = SCORECARD_PROTOCOLS,
               specs: list[RunSpec] | None = None) -> list[dict[str, Any]]:
    """Scorecard rows of one claim: one per (dataset, protocol) of each of its groups, in
    file order. A row says what it lacks in its ``note``: arms without a finished run at
    some seeds, ``n = 1: no CI``, or no pair at all (then ``effect`` and the CI are
    ``None`` and the verdict ``inconclusive``). ``specs``: the grid (:func:`expand_grid`,
    computed when not given)."""
    specs = expand_grid(config) if specs is None else specs
    rows = []
    for group in claim.all_groups:
        cells = [s for s in specs if s.group == group and s.protocol in protocols]
        rows += _group_rows(config, claim, cells)
    return rows


def _dataset(config: StudyConfig, spec: RunSpec) -> str | None:
    return spec.dataset or config.train.get("dataset")


def _schedule_epochs(specs: list[RunSpec]) -> int | None:
    """The epochs the cells train (one resolved config: a variant's cells share them)."""
    if not specs:
        return None
    return int(resolved_config(specs[0].params)["schedule.epochs"])


def arm_epochs(epochs: dict[str, Any], first: str = "") -> str:
    """The arms' epoch counts as one text: ``"14"`` when they agree, else
    ``"14 (no_so), 15 (so)"`` (``first`` before each count, e.g. ``"1–"``)."""
    counts = {str(k): int(v) for k, v in epochs.items() if v is not None}
    if len(set(counts.values())) <= 1:
        return f"{first}{next(iter(counts.values()), '?')}"
    return ", ".join(f"{first}{v} ({k})" for k, v in counts.items())


def epoch_label(metric: str, protocol: str, epochs: dict[str, int | None]) -> str:
    """Which epoch a row's numbers come from, for every table that shows them.

    ``"final"`` (preset: the last epoch of the preset schedule); ``"final = validation-
    selected N"`` (tuned: the last epoch of a schedule of N epochs, N the tuned arm's best
    validation epoch; ``"N1 (arm1), N2 (arm2)"`` when the arms chose differently); for
    ``at_epoch:<e>:...`` metrics ``"epoch e"`` and for ``epochs_to:...`` ``"every epoch"``,
    followed by the tuned schedule's length.
    """
    tuned = protocol != "preset"
    n = arm_epochs(epochs)
    if metric.startswith("at_epoch:"):
        where = f"epoch {metric.split(':')[1]}"
    elif metric.startswith("epochs_to:"):
        where = "every epoch"
    else:
        return f"final = validation-selected {n}" if tuned else "final"
    return f"{where} (of validation-selected {n})" if tuned else where


def _claim_values(config: StudyConfig, claim: ClaimConfig, cells: list[RunSpec]
                  ) -> tuple[dict[int, float], list[int]]:
    """Values by seed of one arm's cells (robustness: each seed's whole lr grid)."""
    if claim.kind == "robustness":
        from dml_study.study.analysis.robustness import arm_values

        return arm_values(config.results_dir, cells, claim.metric)
    return _values(config.results_dir, cells, claim.metric, claim.kind)


def _trials(config: StudyConfig, spec: RunSpec) -> int | None:
    """Trials behind a tuned cell's values (``chosen.json``'s ``n_trials``)."""
    from dml_study.study.plan.config import StudyConfigError
    from dml_study.study.plan.tuned import ChosenValues

    group = config.group(spec.group)
    try:
        chosen = ChosenValues(config).get(str(_dataset(config, spec)), group.tuned_group,
                                          spec.base_variant, spec.protocol)
    except (StudyConfigError, ValueError):
        return None
    return None if chosen is None else chosen.get("n_trials")


def _group_rows(
    config: StudyConfig, claim: ClaimConfig, specs: list[RunSpec]
) -> list[dict[str, Any]]:
    present = {(_dataset(config, s), s.protocol) for s in specs}
    keys = [(d, p) for d in dict.fromkeys(_dataset(config, s) for s in specs)
            for p in dict.fromkeys(s.protocol for s in specs) if (d, p) in present]
    roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
    rows = []
    for dataset, protocol in keys:
        cells = [s for s in specs if (_dataset(config, s), s.protocol) == (dataset, protocol)]
        arms = {role: [s for s in cells if s.base_variant == getattr(claim, role)]
                for role in roles}
        epochs = {getattr(claim, role): _schedule_epochs(arms[role]) for role in roles}
        short = _too_short(claim.metric, epochs)  # then no value can be read
        base_values: dict[int, float] = {}
        treat_values: dict[int, float] = {}
        undefined: list[int] = []
        if not short:
            base_values, undefined = _claim_values(config, claim, arms["baseline"])
        if claim.kind != "correlation" and not short:
            treat_values, treat_undefined = _claim_values(config, claim, arms["treatment"])
            undefined = sorted(set(undefined) | set(treat_undefined))
        by_variant = {getattr(claim, role): arms[role] for role in roles}
        missing = missing_seeds(config.results_dir, by_variant)
        finished = [p for p in (_finished(config.results_dir, s) for s in cells) if p]
        c, d = run_shape(finished[0]) if finished else (None, None)
        tuned = protocol != "preset"
        row: dict[str, Any] = {
            "claim": claim.claim or claim.name, "paper": claim.paper, "dataset": dataset,
            "regime": regime(c, d) if c is not None else "–", "tier": cells[0].tier,
            "protocol": protocol, "metric": claim.metric, "unit": claim.unit,
            "name": claim.name, "group": cells[0].group, "baseline": claim.baseline,
            "classes": c, "dim": d, "direction": claim.direction, "split": "test",
            "epoch": epoch_label(claim.metric, protocol, epochs), "epochs": epochs,
            "epoch_selection": "validation" if tuned else "fixed",
        }
        if claim.kind != "correlation":
            row["treatment"] = claim.treatment
        if tuned:
            row["trials"] = {getattr(claim, role): _trials(config, arms[role][0])
                             for role in roles if arms[role]}
        if claim.kind == "robustness":
            row["lr_factors"] = sorted({float(s.lr_factor) for s in cells})
        confidence = config.stats.confidence
        seeds = sorted(base_values) if claim.kind == "correlation" else sorted(
            set(base_values) & set(treat_values))
        if short or not seeds:
            row.update(effect=None, ci_low=None, ci_high=None, seeds=0,
                       ci_method=None if not seeds else
                       f"paired t over seeds ({confidence:.0%})")
        elif claim.kind == "correlation":
            values = [base_values[k] for k in seeds]
            effect, low, high = mean_ci(values, confidence)
            row.update(effect=effect, ci_low=low, ci_high=high, seeds=len(values),
                       ci_method=f"t over seeds ({confidence:.0%})")
        else:
            comp = paired_comparison(
                [claim.scale * base_values[k] for k in seeds],
                [claim.scale * treat_values[k] for k in seeds],
                metric=claim.metric, confidence=confidence,
                n_resamples=config.stats.bootstrap_resamples, seed=config.stats.seed,
            )
            row.update(
                effect=comp.mean_difference, ci_low=comp.t_ci_low,
                ci_high=comp.t_ci_high, seeds=comp.n, baseline_mean=comp.baseline_mean,
                treatment_mean=comp.treatment_mean, sd_difference=comp.std_difference,
                bootstrap_ci_low=comp.bootstrap_ci_low, bootstrap_ci_high=comp.bootstrap_ci_high,
                ci_method=f"paired t over seeds ({confidence:.0%})",
            )
        low, high = row["ci_low"], row["ci_high"]
        row["verdict"] = verdict_from_ci(float("nan") if low is None else low,
                                         float("nan") if high is None else high,
                                         claim.direction)
        notes = [claim.note] if claim.note else []
        if short:
            notes.append(short)
        else:
            notes += missing_notes(by_variant, missing, seeds)
        if undefined:
            what = ("an incomplete lr grid" if claim.kind == "robustness"
                    else "a constant per-class R@1 or nearest-proxy cosine"
                    if claim.kind == "correlation" else "")
            notes.append(f"undefined on seed(s) {sorted(undefined)} (left out)"
                         + (f": {what}" if what else ""))
        if len(seeds) == 1 and not short:
            notes.append("n = 1: no CI")
        if notes:
            row["note"] = "; ".join(notes)
        rows.append({k: _number(v) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def missing_seeds(results_dir: Path, arms: dict[str, list[RunSpec]]) -> dict[str, list[int]]:
    """Per arm (variant name): the seeds of its cells whose run has not finished."""
    return {arm: sorted(s.seed for s in cells if _finished(results_dir, s) is None)
            for arm, cells in arms.items()}


def missing_notes(
    arms: dict[str, list[RunSpec]], missing: dict[str, list[int]], seeds: list[int]
) -> list[str]:
    """What a row lacks, for its note: the unfinished runs of each arm, and why there is no
    effect at all when no seed is left (no seed finished in every arm, or every such
    seed's value is undefined)."""
    notes = [f"{arm}: no finished run at seed(s) {gaps}" for arm, gaps in missing.items()
             if gaps]
    if not seeds:
        finished = [{s.seed for s in cells} - set(missing[arm]) for arm, cells in arms.items()]
        paired = set.intersection(*finished) if finished else set()
        notes.append("no effect: " + ("the value is undefined at every seed" if paired else
                                      "no seed has a finished run in every arm"))
    return notes


def _too_short(metric: str, epochs: dict[str, int | None]) -> str:
    """Why an ``at_epoch:<e>`` metric cannot be read (an arm trains fewer than e epochs)."""
    if not metric.startswith("at_epoch:"):
        return ""
    epoch = int(metric.split(":")[1])
    short = {k: v for k, v in epochs.items() if v is not None and v < epoch}
    if not short:
        return ""
    arms = ", ".join(f"{k} trains {v}" for k, v in short.items())
    return f"not measured: epoch {epoch} does not exist ({arms} epochs)"


def scorecard(config: StudyConfig) -> list[dict[str, Any]]:
    """Every claim of the study, one row per (claim, dataset, tier, protocol), in file
    order; protocols :data:`SCORECARD_PROTOCOLS`."""
    specs = expand_grid(config)
    return [row for claim in config.claims for row in claim_rows(config, claim, specs=specs)]


def scorecard_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The scorecard for display, one line per row, with the protocol and the epoch its
    numbers come from: effect and CI with the decimals their CI width needs
    (:func:`~dml_study.study.analysis.stats.format_estimate`)."""
    columns = ["paper", "claim", "dataset", "regime", "tier", "protocol", "epoch", "metric",
               "effect", "95% CI", "seeds", "verdict"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    for key, default in (("protocol", "preset"), ("epoch", "final")):
        if key not in frame.columns:
            frame[key] = default
    shown = [format_estimate(r.get("effect"), r.get("ci_low"), r.get("ci_high"), r.get("seeds"))
             for r in rows]
    frame["effect"] = [f"{e} {u}" for (e, _), u in zip(shown, frame["unit"], strict=True)]
    frame["95% CI"] = [ci for _, ci in shown]
    return frame[columns]


def claims_path(config: StudyConfig) -> Path:
    """``results/<study>/claims.json``."""
    return config.study_dir / "claims.json"


def write_claims(config: StudyConfig) -> Path:
    """Compute the scorecard and write it atomically to ``results/<study>/claims.json``."""
    path = claims_path(config)
    atomic_write_json(path, scorecard(config))
    return path


def paired_values(config: StudyConfig, claim: ClaimConfig,
                  protocols: tuple[str, ...] = SCORECARD_PROTOCOLS) -> pd.DataFrame:
    """Per-seed values behind a paired (or robustness) claim: ``dataset, tier, protocol,
    seed, baseline, treatment, effect`` (effect = scale · (treatment − baseline)), seeds of
    both arms only."""
    frames = []
    specs = [s for s in expand_grid(config) if s.group in claim.all_groups
             and s.protocol in protocols]
    for key in dict.fromkeys((s.group, s.dataset, s.protocol) for s in specs):
        cells = [s for s in specs if (s.group, s.dataset, s.protocol) == key]
        base, _ = _claim_values(config, claim,
                                [s for s in cells if s.base_variant == claim.baseline])
        treat, _ = _claim_values(config, claim,
                                 [s for s in cells if s.base_variant == claim.treatment])
        seeds = sorted(set(base) & set(treat))
        frames.append(pd.DataFrame({
            "dataset": key[1] or config.train.get("dataset"), "tier": cells[0].tier,
            "protocol": key[2], "seed": seeds, "baseline": [base[k] for k in seeds],
            "treatment": [treat[k] for k in seeds],
            "effect": [claim.scale * (treat[k] - base[k]) for k in seeds],
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def claim(config: StudyConfig, name: str) -> ClaimConfig:
    """The claim called ``name`` (error lists the study's claims)."""
    for item in config.claims:
        if item.name == name:
            return item
    raise KeyError(f"no claim {name!r}; claims: {', '.join(c.name for c in config.claims)}")


def effects_frame(config: StudyConfig, selected: list[ClaimConfig]) -> pd.DataFrame:
    """Per-seed effects of paired claims with their row's CI, for :func:`plots.paired_effects`.

    Columns of :func:`paired_values` plus ``claim``, ``panel`` (:func:`with_panels`),
    ``ci_low`` and ``ci_high``; empty when no claim has finished runs.
    """
    frames = []
    for item in selected:
        values = paired_values(config, item)
        if values.empty:
            continue
        rows = {(r["dataset"], r["tier"], r["protocol"]): r for r in claim_rows(config, item)}
        keys = list(zip(values["dataset"], values["tier"], values["protocol"], strict=True))
        frames.append(with_panels(values.assign(
            claim=item.name,
            ci_low=[rows[k]["ci_low"] if k in rows else np.nan for k in keys],
            ci_high=[rows[k]["ci_high"] if k in rows else np.nan for k in keys],
        )))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: Order of the protocols within one dataset and tier: the fair comparison first.
PROTOCOL_ORDER = ("tuned", "preset")


def with_panels(values: pd.DataFrame) -> pd.DataFrame:
    """``values`` (columns ``dataset``, ``tier``, ``protocol``...) with a ``panel`` label
    "<dataset> · <tier>\\n<protocol>", ordered by first appearance of dataset and tier and,
    within them, tuned before preset.

    Every panel names its protocol. An unlabelled preset panel read as the headline, and on
    glyphs the preset's SO gain (+4.5 pp) comes from a baseline whose learning rate makes it
    collapse; tuned, the gain is a third of that.
    """
    if values.empty:
        return values.assign(panel=pd.Series(dtype=str))
    where = {key: i for i, key in enumerate(dict.fromkeys(zip(values["dataset"],
                                                              values["tier"], strict=True)))}
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    order = sorted(range(len(values)), key=lambda i: (
        where[(values["dataset"].iloc[i], values["tier"].iloc[i])],
        rank.get(values["protocol"].iloc[i], len(rank)), i))
    out = values.iloc[order].reset_index(drop=True)
    return out.assign(panel=out["dataset"] + " · " + out["tier"] + "\n" + out["protocol"])
