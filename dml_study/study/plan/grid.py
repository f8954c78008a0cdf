"""The ablation grid: study groups -> run specs with stable names -> executed training runs.

Each (group, variant, seed) cell of a study becomes a :class:`RunSpec` whose ``params``
are the complete parameters handed to ``02_train`` (study ``train`` defaults, then the
group's ``base``, then the variant's overrides, then the seed). The run name is a
readable prefix plus a hash of those parameters, so

- the same configuration always gets the same name (across processes and re-runs),
- cells of different groups that describe the same run (e.g. ``λ = 0`` of the sweep and
  the no-SO baseline at seed 0) share one run and train once, and
- a run directory with ``metrics.json`` is reused instead of retrained.

Parameters that do not change the result (device, number of workers, verbosity, data
location) are left out of the hash, so moving a study to another machine reuses runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_study.config import ExperimentConfig, config_from_parameters, run_name
from dml_study.study.plan.config import GroupConfig, StudyConfig, format_value
from dml_study.training.run_dir import RunDirectory
from dml_study.typed_fields import flatten


@dataclass(frozen=True)
class FeatureSettings:
    """How a dataset's features are cached: augmented views per training image, their seed,
    and optional seeded per-class subsets (many-class datasets: every class is kept, each
    with at most ``max_*_per_class`` images, so extraction and runs stay CPU-sized)."""

    views: int = 8
    feature_seed: int = 0
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None

    def identity(self) -> dict[str, Any]:
        """The settings that change the features (unset subsets are left out)."""
        out = {"views": int(self.views), "feature_seed": int(self.feature_seed)}
        for key in ("max_train_per_class", "max_test_per_class"):
            if getattr(self, key) is not None:
                out[key] = int(getattr(self, key))
        return out



@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid at one seed.

    ``protocol`` says where its hyperparameters come from: ``"preset"`` (the variant as the
    study file writes it), ``"tuned"`` (the tuned arm's ``chosen.json`` applied,
    :mod:`dml_study.study.plan.tuned`) or the budget check's ``"tuned-<k>x"``. A cell of an
    lr grid (a group's ``lr_factors``) has its ``lr_factor`` and is named
    ``<variant>@lr×<factor>``; ``base_variant`` is the variant it was built from.
    """

    group: str
    variant: str
    seed: int
    params: dict[str, Any] = field(hash=False)
    run_name: str = ""
    #: ``"fine-tuned"`` (``02_train``) or ``"frozen"`` (:mod:`dml_study.study.tiers.frozen`).
    tier: str = "fine-tuned"
    protocol: str = "preset"
    #: The factor the cell's lr was multiplied by (``None``: not an lr-grid cell).
    lr_factor: float | None = None
    #: The group's variant the cell was built from (default: ``variant``).
    base_variant: str = ""

    def __post_init__(self) -> None:
        if not self.base_variant:
            object.__setattr__(self, "base_variant", self.variant)

    @property
    def dataset(self) -> str | None:
        return self.params.get("dataset")

    @property
    def split(self) -> str:
        """What the run evaluates: ``"test"`` (every grid cell) or ``"validation"``."""
        return str(self.params.get("split") or "test")

    @property
    def label(self) -> str:
        """``group/variant``, with `` (<protocol>)`` for cells that are not preset."""
        tail = "" if self.protocol == "preset" else f" ({self.protocol})"
        return f"{self.group}/{self.variant}{tail}"

    def notebook_parameters(self, results_dir: Path) -> dict[str, Any]:
        """The parameters ``02_train`` is executed with (fine-tuned runs only)."""
        if self.tier == "frozen":
            raise ValueError(
                f"run {self.run_name} belongs to the frozen tier: it is trained in-process by "
                "dml_study.study.tiers.frozen_batched.run_frozen_tier, not by executing "
                "02_train; route specs with tier == 'frozen' there"
            )
        return {**self.params, "run_name": self.run_name, "results_dir": str(results_dir)}


def experiment_config(params: dict[str, Any]) -> ExperimentConfig:
    """The :class:`~dml_study.config.ExperimentConfig` ``02_train`` builds from ``params``.

    The notebook's own function, :func:`dml_study.config.config_from_parameters`, so
    ``None`` values take the dataset preset. Raises the config's own error for invalid values.
    """
    return config_from_parameters(params)


def resolved_config(params: dict[str, Any]) -> dict[str, Any]:
    """The complete training config built from ``params``, flat (dotted keys)."""
    return flatten(experiment_config(params).to_dict())


def make_run_name(params: dict[str, Any], tier: dict[str, Any] | None = None) -> str:
    """The name of the run ``02_train`` trains from ``params``: the config's one name,
    :func:`dml_study.config.run_name` (its hash covers the *complete* config the notebook
    builds, preset values included; ``tier`` marks frozen-tier runs)."""
    return run_name(experiment_config(params), tier)


def frozen_feature_settings(config: StudyConfig, dataset: str | None) -> FeatureSettings:
    """:class:`FeatureSettings` of ``dataset`` in this study."""
    f = config.frozen
    return FeatureSettings(**{"views": f.views, "feature_seed": f.feature_seed,
                              **f.features.get(str(dataset), {})})


def frozen_tier_identity(config: StudyConfig, dataset: str | None) -> dict[str, Any]:
    """What makes a frozen run differ from a fine-tuned one of the same config."""
    return {"tier": "frozen", **frozen_feature_settings(config, dataset).identity()}


def cell_parameters(
    config: StudyConfig, group: GroupConfig, dataset: str | None,
    overrides: dict[str, Any], seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The complete ``02_train`` parameters of one cell, and its tier identity.

    Parameters: the study's ``train``, then (frozen tier) ``frozen.train`` and
    ``frozen.datasets[<dataset>]``, then the group's ``base``, the variant's ``overrides``
    and the seed; ``dataset`` (one of the group's ``datasets``, or ``None``: the group's own)
    and the study's ``data_root`` (when no parameter sets one) last. The tier identity is
    :func:`frozen_tier_identity` for a frozen group, else ``None``. The grid and the tuner
    (:mod:`dml_study.study.tune`) both build cells here, so a tuned arm trains the grid's run.
    """
    frozen = group.tier == "frozen"
    shared = {**config.train, **(config.frozen.train if frozen else {})}
    if dataset is not None:
        shared["dataset"] = dataset
    name = group.base.get("dataset") or shared.get("dataset")
    if frozen and name in config.frozen.datasets:
        shared.update(config.frozen.datasets[name])
    tier = frozen_tier_identity(config, name) if frozen else None
    params = {**shared, **group.base, **overrides, "seed": int(seed)}
    if dataset is not None:
        params["dataset"] = dataset
    if config.data_root is not None and params.get("data_root") is None:
        params["data_root"] = str(config.data_root)
    return params, tier


def lr_variant_name(variant: str, factor: float) -> str:
    """Name of an lr-grid cell's variant, e.g. ``so@lr×0.316``."""
    return f"{variant}@lr×{format_value(float(factor))}"


def group_protocols(config: StudyConfig, group: GroupConfig) -> tuple[str, ...]:
    """The protocols of ``group``'s cells: its ``protocols``, then the budget check's
    ``tuned-<k>x`` when the group is tuned and holds an arm the check covers."""
    protocols = tuple(group.protocols)
    check = config.tuning.budget_check if config.tuning is not None else None
    if check is not None and "tuned" in protocols and group.lr_factors == () and any(
            a.split("/", 1)[0] == group.tuned_group for a in check.arms):
        protocols += (check.protocol,)
    return protocols


def expand_grid(config: StudyConfig, *, skip_untuned: bool = False) -> list[RunSpec]:
    """Every (group, protocol, dataset, variant, lr factor, seed) cell of the study, in
    file order.

    Parameters: :func:`cell_parameters` (the study's ``train``, then (frozen tier)
    ``frozen.train`` and ``frozen.datasets[<dataset>]``, then the group's ``base``, the
    variant's overrides and the seed). A group with ``datasets`` repeats every cell once per
    dataset. A tuned cell (``protocols: [..., tuned]``) then gets its arm's chosen values,
    epochs and ``split: test`` (:mod:`dml_study.study.plan.tuned`; seeds: ``tuned_seeds``);
    a group's ``lr_factors`` repeat each cell with its lr multiplied by each factor. The
    budget check's cells (``tuning.budget_check``) are the checked arms' tuned cells with
    the larger search's choice.

    Raises :class:`~dml_study.study.plan.tuned.MissingTunedValuesError` naming every
    ``chosen.json`` the tuned cells need that is missing or incomplete (and the command
    that writes them), and :class:`~dml_study.study.plan.tuned.StaleTunedValuesError` for
    one tuned for other parameters than its cell's. With ``skip_untuned`` the cells of such
    searches are left out instead (``--list-runs`` before ``tune``; see
    :func:`untuned_searches`).
    """
    from dml_study.study.plan.tuned import ChosenValues

    key = (id(config), skip_untuned, _tuning_fingerprint(config))
    cached = _GRIDS.get(key)
    if cached is not None and cached[0] is config:
        return list(cached[1])
    chosen = ChosenValues(config)
    specs: list[RunSpec] = []
    for group in config.groups:
        for protocol in group_protocols(config, group):
            specs += _group_cells(config, group, protocol, chosen)
    if not skip_untuned:
        chosen.raise_missing()
    if len(_GRIDS) >= _MAX_GRIDS:
        _GRIDS.pop(next(iter(_GRIDS)))
    _GRIDS[key] = (config, tuple(specs))
    return specs


#: Grids already expanded in this process, by study config (its identity: a
#: :class:`StudyConfig` is frozen) and the state of its ``chosen.json`` files. A notebook asks
#: for the grid once per claim and figure; building it resolves and validates a config per
#: cell (seconds for the embedded study's 5,000 cells), so it is built once.
_GRIDS: dict[tuple[Any, ...], tuple[StudyConfig, tuple[RunSpec, ...]]] = {}
_MAX_GRIDS = 8


def _tuning_fingerprint(config: StudyConfig) -> tuple[tuple[str, int, int], ...]:
    """Path, size and modification time of every ``chosen.json`` the tuned cells may read
    (``results/<study>/tuning*/``): a search that finishes changes the grid."""
    study_dir = config.study_dir
    if not study_dir.is_dir():
        return ()
    found = []
    for path in sorted(study_dir.glob("tuning*/**/chosen.json")):
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def untuned_searches(config: StudyConfig) -> dict[Path, str]:
    """The ``chosen.json`` files the grid's tuned cells need that are missing or unusable,
    with why (empty: :func:`expand_grid` can build every cell)."""
    from dml_study.study.plan.tuned import ChosenValues

    chosen = ChosenValues(config)
    for group in config.groups:
        for protocol in group_protocols(config, group):
            _group_cells(config, group, protocol, chosen)
    return dict(chosen.problems)


def _group_cells(config: StudyConfig, group: GroupConfig, protocol: str,
                 chosen: Any) -> list[RunSpec]:
    from dml_study.study.plan.tuned import (
        apply_values,
        check_chosen_matches,
        final_split_parameters,
        scale_lr,
    )

    check = config.tuning.budget_check if config.tuning is not None else None
    budget_check = check is not None and protocol == check.protocol
    specs: list[RunSpec] = []
    for dataset in group.datasets or (None,):
        name = dataset or group.base.get("dataset") or config.train.get("dataset")
        if budget_check and check.datasets and name not in check.datasets:
            continue
        for variant, overrides in group.variant_overrides():
            values = None
            if protocol != "preset":
                arm = f"{group.tuned_group}/{variant}"
                if budget_check and arm not in check.arms:
                    continue
                values = chosen.get(str(name), group.tuned_group, variant, protocol)
                if values is None:
                    continue  # reported once for all cells by ChosenValues.raise_missing
            for factor in group.lr_factors or (None,):
                cell_variant = variant if factor is None else lr_variant_name(variant, factor)
                for seed in group.protocol_seeds(protocol):
                    params, tier = cell_parameters(config, group, dataset, overrides, seed)
                    if values is not None:
                        params = apply_values(params, values.get("params") or {})
                        params["epochs"] = int(values["epochs"])
                        check_chosen_matches(params, values, tier,
                                             f"{group.name}/{variant} ({protocol}) on {name}")
                        params.update(final_split_parameters())
                    if factor is not None:
                        params = scale_lr(params, factor)
                    specs.append(RunSpec(group.name, cell_variant, int(seed), params,
                                         make_run_name(params, tier=tier), group.tier,
                                         protocol=protocol, lr_factor=factor,
                                         base_variant=variant))
    return specs


def lr_grid_groups(config: StudyConfig) -> list[GroupConfig]:
    """Groups whose tuned cells form an lr grid (``lr_factors`` and a tuned protocol): the
    robustness claims' groups."""
    return [g for g in config.groups if g.lr_factors and "tuned" in g.protocols]


def lr_grid_cells(config: StudyConfig, split: str = "test") -> list[RunSpec]:
    """The lr-grid cells whose every arm has its ``chosen.json`` (missing ones are left out,
    per group and dataset, never raised): ``split="test"`` the grid's cells (as
    :func:`expand_grid` has them), ``split="validation"`` the same cells as validation runs,
    one per fold of ``tuning.validation.fold_ids``, which ``tune`` trains (under the
    test-split guard) and the robustness heatmap shows beside the test panel.
    """
    from dml_study.study.plan.tuned import ChosenValues, validation_split_parameters

    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    specs: list[RunSpec] = []
    for group in lr_grid_groups(config):
        chosen = ChosenValues(config)
        cells = _group_cells(config, group, "tuned", chosen)
        variants = {v for v, _ in group.variant_overrides()}
        complete = {d for d in {s.dataset for s in cells}
                    if {s.base_variant for s in cells if s.dataset == d} == variants}
        specs += [s for s in cells if s.dataset in complete]
    if split == "test" or not specs:  # no lr grid (or none complete): no validation cells
        return specs
    assert config.tuning is not None  # a tuned group has a tuning section (checked on load)
    out = []
    for spec in specs:
        tier = frozen_tier_identity(config, spec.dataset) if spec.tier == "frozen" else None
        for fold in config.tuning.validation.fold_ids:
            params = {**spec.params, **validation_split_parameters(config.tuning.validation,
                                                                   fold)}
            out.append(dataclasses.replace(spec, params=params,
                                           run_name=make_run_name(params, tier=tier)))
    return out


def unique_runs(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """One spec per distinct run name (the first cell that asks for it), in order."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        seen.setdefault(spec.run_name, spec)
    return list(seen.values())


def is_finished(results_dir: Path, run_name: str) -> bool:
    """True when the run is finished (:meth:`RunDirectory.is_finished`): it will be reused."""
    return RunDirectory.for_run(results_dir, run_name).is_finished()


@dataclass(frozen=True)
class RunOutcome:
    """What training did with one run of the grid (reused or trained, seconds, notebook)."""

    run_name: str
    status: str  # "reused" | "trained"
    seconds: float
    executed_notebook: Path | None


def headline_runs(config: StudyConfig, seed: int | None = None,
                  protocol: str = "preset") -> tuple[RunSpec, RunSpec]:
    """The (baseline, treatment) runs of the headline comparison at ``seed``.

    ``seed`` defaults to ``config.analysis.seed``; it must be one of the group's seeds (of
    ``protocol``'s cells: ``preset``, or ``tuned``).
    """
    head = config.headline
    seed = config.analysis.seed if seed is None else seed
    cells = {(s.variant, s.seed): s for s in expand_grid(config)
             if s.group == head.group and s.protocol == protocol}
    try:
        return cells[(head.baseline, seed)], cells[(head.treatment, seed)]
    except KeyError:
        seeds = sorted({s for _, s in cells})
        raise ValueError(
            f"seed {seed} is not a seed of headline group {head.group!r}; seeds: {seeds}"
        ) from None


def headline_protocol(config: StudyConfig) -> str:
    """The protocol the index's headline compares: ``tuned`` when the headline group has
    tuned cells (every arm at its equal-budget tuned values), else ``preset``."""
    group = next((g for g in config.groups if g.name == config.headline.group), None)
    return "tuned" if group is not None and "tuned" in group.protocols else "preset"


#: Resolved config keys shown by :func:`settings_table` (the ones tiers and datasets vary).
SETTINGS_KEYS: tuple[str, ...] = (
    "model.backbone", "data.image_size", "model.embedding_dim", "schedule.epochs",
    "data.batch_size", "data.m_per_class", "optim.lr", "optim.head_lr_mult",
    "optim.proxy_lr_mult", "schedule.freeze_backbone_epochs",
)


def settings_table(specs: Iterable[RunSpec]) -> Any:
    """One row per (tier, dataset): the key resolved settings of its first run."""
    import pandas as pd

    rows = {}
    for spec in specs:
        key = (spec.tier, spec.dataset)
        if key in rows:
            continue
        config = resolved_config(spec.params)
        rows[key] = {k.split(".", 1)[1]: config.get(k) for k in SETTINGS_KEYS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.names = ["tier", "dataset"]
    return frame


def outcome_summary(outcomes: Iterable[RunOutcome], specs: Iterable[RunSpec]) -> Any:
    """Runs trained / reused per tier and the training time (s, whole seconds)."""
    import pandas as pd

    tiers = {s.run_name: s.tier for s in specs}
    frame = pd.DataFrame([{"tier": tiers.get(o.run_name, "?"), "status": o.status,
                           "seconds": o.seconds} for o in outcomes])
    if frame.empty:
        return pd.DataFrame(columns=["tier", "status", "runs", "seconds"])
    return (frame.groupby(["tier", "status"]).agg(runs=("seconds", "size"),
                                                  seconds=("seconds", "sum"))
            .round(0).astype(int))
