"""Typed study configuration: what a study runs, loaded from ``studies/<name>.yaml``.

A study is a list of notebooks executed in order, the shared training parameters every
run of ``02_train`` receives, and the ablation grid (see :mod:`dml_study.study.plan.grid`).
Every section is a frozen dataclass; unknown keys, wrong types and invalid choices are
rejected with an error that names the key path and lists the valid keys or choices,
because a typo in a study file would otherwise silently fall back to a default and
produce a study that is not the one asked for.

Relative paths in the file are resolved against the project root: by default the
parent of the folder holding the file (``studies/x.yaml`` -> project root), or the
``root`` key (relative to the file) when given. That way a study resolves the same
whether it is run from the command line, from ``make`` or from a notebook in
``notebooks/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dml_study.config import IDENTITY_NEUTRAL_KEYS, TRAIN_PARAMETERS, ConfigError, resolve_key
from dml_study.training.run_dir import runs_root
from dml_study.typed_fields import coerce, did_you_mean, field_types

#: Set to a study's name while its run executes in ``<results>/<name>.staging``.
STAGING_ENV = "DML_STUDY_STAGING"
STAGING_SUFFIX = ".staging"

#: Parameters of ``02_train`` (:data:`dml_study.config.TRAIN_PARAMETERS`) a study file may
#: not set: switches of one interactive run. ``config_yaml`` would put settings outside the
#: study file, ``overwrite``/``allow_lr_change`` are decided by the launcher (a finished run
#: is reused), and the data checks ``on_corrupt``/``check_images`` are left to the presets.
NOTEBOOK_ONLY_PARAMETERS: tuple[str, ...] = (
    "config_yaml", "overwrite", "allow_lr_change", "on_corrupt", "check_images",
)

#: Training parameters a study may name (``02_train``'s, less :data:`NOTEBOOK_ONLY_PARAMETERS`).
#: ``None`` means "from the dataset preset".
STUDY_TRAIN_PARAMETERS: tuple[str, ...] = tuple(
    p for p in TRAIN_PARAMETERS if p not in NOTEBOOK_ONLY_PARAMETERS
)

#: Parameters the study sets itself for every run; a study file may not set them.
RESERVED_TRAIN_PARAMETERS: tuple[str, ...] = ("run_name", "results_dir", "seed")


def train_choices() -> dict[str, tuple[str, ...]]:
    """Valid choices of the categorical training parameters, asked of the registries.

    Imported here rather than at module level: the registries import torch, which loading
    a study file needs only once it validates names.
    """
    from dml_study.data.registry import list_datasets
    from dml_study.data.splits import SPLITS
    from dml_study.losses.base import list_proxy_inits
    from dml_study.losses.registry import list_losses
    from dml_study.losses.soft_orthogonality import GRAMS, REDUCTIONS

    return {
        "dataset": tuple(list_datasets()),
        "split": SPLITS,
        "loss": tuple(list_losses()),
        "so_gram": GRAMS,
        "so_reduction": REDUCTIONS,
        "proxy_init": tuple(list_proxy_inits()),
    }

RECIPES: tuple[str, ...] = ("cpu", "full")

#: How a group's runs are trained: ``"fine-tuned"`` (``02_train``: the whole network) or
#: ``"frozen"`` (head + proxies on cached backbone features, :mod:`dml_study.study.tiers.frozen`).
TIERS: tuple[str, ...] = ("fine-tuned", "frozen")


#: ``frozen.batch_mode`` values (:mod:`dml_study.study.tiers.frozen_batched`).
FROZEN_BATCH_MODES: tuple[str, ...] = ("exact", "fast", "sequential")


class StudyConfigError(ValueError):
    """A study file that cannot be used; the message names the key path and valid choices."""


@dataclass(frozen=True)
class ExecutionConfig:
    """How notebooks are executed and rendered."""

    kernel_name: str = "python3"
    #: Seconds a single cell may run (``None``: no limit).
    cell_timeout: int | None = None
    #: Render every executed notebook to HTML with nbconvert.
    html: bool = True
    #: Resolution of the PNG figures embedded in notebooks (keeps the HTML small).
    figure_dpi: int = 80
    #: Stream the notebooks' printed output (progress lines) to the terminal.
    stream_output: bool = True
    #: How the grid's runs are trained before the notebooks: ``local`` or ``slurm``
    #: (:mod:`dml_study.study.launch.launcher`; ``--launcher`` on the command line).
    launcher: str = "local"
    #: Runs trained at once by the local launcher (``--max-parallel``).
    max_parallel: int = 1
    #: Devices the local launcher assigns round-robin to concurrent runs (``--devices``);
    #: empty: every run uses the study's ``train.device``.
    devices: tuple[str, ...] = ()
    #: CPU threads per concurrent local run (``None``: the cores divided by ``max_parallel``).
    threads_per_run: int | None = None
    #: Resources of each SLURM job (``--launcher slurm``).
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig())


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one SLURM job (one grid run); the ``execution.slurm`` section.

    Every key can be overridden on the command line: ``--slurm partition=gpu``. Values map
    onto :meth:`submitit.AutoExecutor.update_parameters`.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    #: Wall-clock limit of one job, minutes; a run that needs longer is requeued at the
    #: limit and resumes from its checkpoint (up to ``max_requeues`` times).
    time_min: int = 240
    max_requeues: int = 3
    #: GPUs of one run; more than one trains it with ``torchrun --nproc_per_node`` (DDP).
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: int | None = 32
    #: Most runs of the job array running at once.
    array_parallelism: int = 64
    #: Shell lines run before each job (e.g. ``module load cuda``, activating the venv).
    setup: tuple[str, ...] = ()
    #: Further ``#SBATCH`` options, e.g. ``{"gres": "gpu:a100:1"}``.
    additional: dict[str, Any] = field(default_factory=dict)
    #: submitit cluster: ``None`` (SLURM when ``sbatch`` exists), ``slurm``, or ``local``
    #: (the same jobs as local processes through submitit's LocalExecutor; for testing).
    cluster: str | None = None


@dataclass(frozen=True)
class GroupConfig:
    """One ablation: named variants (and/or a one-parameter sweep) over some seeds.

    ``variants`` maps a variant name to the training parameters it overrides; ``sweep``
    maps one parameter name to the list of values it takes (one variant per value, named
    ``<param>=<value>``). ``base`` is applied to every variant of the group first.
    """

    name: str
    seeds: tuple[int, ...] = (0,)
    base: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    #: ``"fine-tuned"`` (default) or ``"frozen"``; see :data:`TIERS`.
    tier: str = "fine-tuned"
    #: Run every variant on each of these datasets (empty: the dataset of ``train``/``base``).
    datasets: tuple[str, ...] = ()
    #: How the cells' hyperparameters are set (:data:`PROTOCOLS`): ``preset`` (the
    #: variant as written, on the dataset preset) and/or ``tuned`` (the variant with its
    #: tuned arm's ``chosen.json`` applied: :mod:`dml_study.study.plan.tuned`).
    protocols: tuple[str, ...] = ("preset",)
    #: Seeds of the tuned cells (empty: ``seeds``); issue #19 asks >= 10 frozen, >= 5
    #: fine-tuned.
    tuned_seeds: tuple[int, ...] = ()
    #: The group whose tuned arms (``<tuned_from>/<variant>``) give the tuned cells their
    #: values (empty: this group); e.g. an lr grid around another group's tuned values.
    tuned_from: str = ""
    #: Factors the cells' learning rate is multiplied by, one cell per factor (empty: one
    #: cell at the lr as it is): the lr grid of the robustness claim (``kind: robustness``).
    lr_factors: tuple[float, ...] = ()

    @property
    def tuned_group(self) -> str:
        """The group whose tuned arms this group's tuned cells read (``tuned_from`` or itself)."""
        return self.tuned_from or self.name

    def protocol_seeds(self, protocol: str) -> tuple[int, ...]:
        """Seeds of the cells of ``protocol``: ``tuned_seeds`` (else ``seeds``) when tuned."""
        return (self.tuned_seeds or self.seeds) if protocol != "preset" else self.seeds

    def variant_overrides(self) -> list[tuple[str, dict[str, Any]]]:
        """``(variant name, parameter overrides)`` of every variant, in file order:
        ``variants``, then one per ``sweep`` value (named by :func:`sweep_variant_name`)."""
        variants = list(self.variants.items())
        for param, values in self.sweep.items():
            variants += [(sweep_variant_name(param, v), {param: v}) for v in values]
        return variants


def sweep_variant_name(param: str, value: Any) -> str:
    """Name of the variant a sweep value produces, e.g. ``so_lambda=0.01``."""
    return f"{param}={format_value(value)}"


def format_value(value: Any) -> str:
    """A parameter value as it appears in variant and run names (floats as ``%g``)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class HeadlineConfig:
    """The comparison reported in the study's index: ``treatment`` vs ``baseline``."""

    group: str = "so_vs_none"
    baseline: str = "no_so"
    treatment: str = "so"
    metrics: tuple[str, ...] = ("R@1", "MAP@R")


@dataclass(frozen=True)
class FrozenConfig:
    """Settings of the frozen-backbone tier (:mod:`dml_study.study.tiers.frozen`)."""

    #: Cached augmented views per training image.
    views: int = 8
    #: Seed of the cached augmentations (the runs' own seeds vary head, proxies and batches).
    feature_seed: int = 0
    #: Training parameters of every frozen run, on top of the study's ``train``.
    train: dict[str, Any] = field(default_factory=dict)
    #: Per-dataset training parameters of frozen runs (e.g. the embedding size that puts a
    #: dataset in the C < d or C >> d regime).
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per-dataset feature settings overriding ``views`` / ``feature_seed`` and setting
    #: ``max_train_per_class`` / ``max_test_per_class`` (seeded per-class subsets).
    features: dict[str, dict[str, int]] = field(default_factory=dict)
    #: How the runs are trained (:mod:`dml_study.study.tiers.frozen_batched`): ``exact``
    #: (many runs as one batched computation, bit-identical to one run after the other),
    #: ``fast`` (fused kernels; equal up to float32 rounding, docs/frozen-tier.md) or
    #: ``sequential`` (the reference trainer, one run after the other).
    batch_mode: str = "exact"
    #: Runs trained together at most.
    batch_runs: int = 32
    #: Worker processes training the batches (``exact``/``fast``), one thread each; ``None``:
    #: ``execution.max_parallel``, the local launcher's concurrent runs. The bits of a run do
    #: not depend on it (docs/frozen-tier.md).
    workers: int | None = None


@dataclass(frozen=True)
class ClaimConfig:
    """One claim of a paper, measured as ``treatment − baseline`` within a group.

    ``metric`` names what is compared (see :func:`dml_study.study.analysis.claims.run_value`):
    a final metric (``R@1``, ``MAP@R``), a proxy statistic (``proxies/mean_abs_cos``,
    ``proxies/close_classes@0.5``), convergence (``epochs_to:0.9:R@1``, ``at_epoch:2:R@1``)
    or, with ``kind: correlation``, a per-class rank correlation of the baseline runs
    (``spearman:nearest_proxy_cos:train_R@1``), or, with ``kind: robustness`` on a group
    with ``lr_factors``, a statistic of each arm's whole lr grid per seed
    (``lrs_within:1:R@1``, ``mean_drop:R@1``: :mod:`dml_study.study.analysis.robustness`).
    ``direction`` is what the paper claims: ``increase`` / ``decrease`` of treatment −
    baseline (or of the correlation), or ``any`` (a difference in either direction). One
    scorecard row per dataset and protocol of each group.
    """

    @property
    def all_groups(self) -> tuple[str, ...]:
        """``group`` followed by ``groups``."""
        return tuple(dict.fromkeys(g for g in (self.group, *self.groups) if g))

    name: str
    claim: str = ""
    paper: str = "SO"
    group: str = ""
    #: More groups measured the same way (e.g. one group per benchmark in ``paper.yaml``).
    groups: tuple[str, ...] = ()
    baseline: str = ""
    treatment: str = ""
    metric: str = "R@1"
    kind: str = "paired"
    direction: str = "increase"
    #: Multiplier applied to the values (100: fractions to percentage points).
    scale: float = 100.0
    unit: str = "pp"
    note: str = ""


CLAIM_PAPERS: tuple[str, ...] = ("SO", "adaptive")
CLAIM_KINDS: tuple[str, ...] = ("paired", "correlation", "robustness")

#: How a group's cells get their hyperparameters (``protocols:`` of a group): ``preset``
#: (as written) and ``tuned`` (from the group's tuned arms, issue #19).
PROTOCOLS: tuple[str, ...] = ("preset", "tuned")
CLAIM_DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "any")


@dataclass(frozen=True)
class AnalysisConfig:
    """Which two runs the proxy analysis notebook compares, and t-SNE settings."""

    #: Seed of the headline runs compared in ``04_proxy_analysis``.
    seed: int = 0
    tsne_max_points: int = 1500
    tsne_perplexity: float = 30.0


@dataclass(frozen=True)
class StatsConfig:
    """Settings of the paired comparison (bootstrap CI over seeds)."""

    confidence: float = 0.95
    bootstrap_resamples: int = 10000
    seed: int = 0


# --------------------------------------------------------------------------- tuning


#: Samplers and pruners of the ``tuning`` section (Optuna's TPE / random search; median rule).
TUNING_SAMPLERS: tuple[str, ...] = ("tpe", "random")
TUNING_PRUNERS: tuple[str, ...] = ("median", "none")

#: Default trials per arm and tier: issue #19's budget of the embedded study (>= 24 frozen,
#: >= 6 fine-tuned trials per arm).
DEFAULT_TUNING_TRIALS: dict[str, int] = {"frozen": 24, "fine-tuned": 6}

#: Config fields holding a mapping whose entries a search space may name with a third dotted
#: part (``loss.params.margin`` is the entry ``margin`` of ``loss.params``).
DICT_CONFIG_FIELDS: tuple[str, ...] = ("loss.params", "model.timm_kwargs")

#: Keys a search space must hold (dotted): the three learning rates of every arm.
REQUIRED_SEARCH_KEYS: tuple[str, ...] = ("optim.lr", "optim.proxy_lr_mult", "optim.head_lr_mult")

#: Keys that are never searched: epochs (every trial trains the arm's epochs and is scored at
#: its best validation epoch), what the run is (dataset, seed, split) and result-neutral keys.
UNSEARCHABLE_KEYS: frozenset[str] = IDENTITY_NEUTRAL_KEYS | {
    "schedule.epochs", "run.seed", "data.dataset", "data.split", "data.val_folds",
    "data.val_fold", "data.val_seed",
}

#: Keys of one search-space entry.
SEARCH_PARAM_KEYS: tuple[str, ...] = ("low", "high", "log", "step", "int", "choices")


@dataclass(frozen=True)
class SearchParam:
    """One searched hyperparameter: a float range (``log`` for log-uniform, ``step`` for a
    grid), an integer range (``int: true``) or a list of ``choices``.

    YAML: ``{low: 1.0e-5, high: 1.0e-3, log: true}``, ``{low: 2, high: 8, int: true}``,
    ``{low: 0.0, high: 0.5, step: 0.05}`` or ``{choices: [10, 100, 1000]}``.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def kind(self) -> str:
        """``"categorical"``, ``"int"`` or ``"float"``."""
        if self.choices is not None:
            return "categorical"
        return "int" if self.integer else "float"

    def to_json(self) -> dict[str, Any]:
        """The entry as written in the study file (plus its ``type``)."""
        if self.choices is not None:
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high,
                               "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class TuningArmConfig:
    """One tuned arm: a group's variant, its search space, and (optionally) its own datasets,
    budget and fixed parameters. One search runs per (dataset, arm)."""

    group: str
    variant: str
    #: Searched keys (02_train parameter names, config keys, ``loss.params.<name>``).
    space: dict[str, SearchParam] = field(default_factory=dict)
    #: Datasets searched (empty: the group's datasets, else its ``base``/``train`` dataset).
    datasets: tuple[str, ...] = ()
    #: Trials of this arm (``None``: ``tuning.trials`` of the group's tier).
    trials: int | None = None
    #: Parameters set on top of the variant for every trial (and for the final runs: they
    #: are part of ``chosen.json``), e.g. the mapping of a constant-margin arm.
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"<group>/<variant>"``."""
        return f"{self.group}/{self.variant}"


@dataclass(frozen=True)
class SamplerConfig:
    """Optuna's sampler: TPE (Bergstra et al., NeurIPS 2011) with a fixed seed, or random."""

    name: str = "tpe"
    seed: int = 0
    #: Trials sampled at random before TPE models the results (Optuna's default, 10).
    startup_trials: int = 10


@dataclass(frozen=True)
class PrunerConfig:
    """Optuna's median stopping rule on per-epoch validation values (frozen trials only)."""

    name: str = "median"
    #: Trials of the arm completed before any is pruned.
    startup_trials: int = 5
    #: Epochs of every trial that are never pruned.
    warmup_epochs: int = 3


@dataclass(frozen=True)
class ValidationConfig:
    """Class-disjoint validation folds of the training classes (contract A of issue #19).

    The objective of a trial is the mean over ``fold_ids`` (MLRC: 4 folds, all of them).
    """

    folds: int = 4
    fold_ids: tuple[int, ...] = (0,)
    seed: int = 0


@dataclass(frozen=True)
class BudgetCheckConfig:
    """``tuning.budget_check``: does the budget suffice? (issue #19, "Budget")

    The searches of ``arms`` (``group/variant``; on ``datasets``, default each arm's own)
    are run again with ``factor`` times their trials into ``results/<study>/tuning-<factor>x/``
    (``python -m dml_study.study tune --budget-check``), leaving the committed choice in
    ``tuning/`` as it is; the final runs of the larger budget's choice are the grid's
    ``tuned-<factor>x`` cells, so the report can say whether the chosen values and the
    verdicts move (docs/tuning.md).
    """

    arms: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    factor: int = 2

    @property
    def dirname(self) -> str:
        """``"tuning-<factor>x"``: the directory under ``results/<study>/``."""
        return f"tuning-{self.factor}x"

    @property
    def protocol(self) -> str:
        """``"tuned-<factor>x"``: the protocol of its final runs."""
        return f"tuned-{self.factor}x"


@dataclass(frozen=True)
class TuningConfig:
    """The ``tuning`` section: equal-budget searches on validation classes (docs/tuning.md)."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    #: The validation metric maximised at the best validation epoch.
    objective: str = "MAP@R"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    #: Trials per arm by tier (an arm's own ``trials`` wins).
    trials: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TUNING_TRIALS))
    arms: tuple[TuningArmConfig, ...] = ()
    #: Training seed of every trial run (the final runs use the groups' seeds).
    train_seed: int = 0
    #: Frozen-tier trials asked and trained as one batch (``--batch``).
    batch_trials: int = 1
    #: Searches run again with more trials, to check the budget (:class:`BudgetCheckConfig`).
    budget_check: BudgetCheckConfig | None = None

    def arm(self, name: str) -> TuningArmConfig:
        """The arm ``"<group>/<variant>"``."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        names = [a.name for a in self.arms]
        raise StudyConfigError(f"no tuned arm {name!r}; arms: {', '.join(names) or '(none)'}"
                               f"{did_you_mean(name, names)}")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study; see ``studies/embedded.yaml`` for a commented example."""

    name: str
    title: str = ""
    description: str = ""
    #: ``"cpu"`` (CPU-sized runs) or ``"full"`` (the published recipe): a label for tables.
    recipe: str = "cpu"
    datasets: tuple[str, ...] = ("icons",)
    data_root: Path | None = None
    results_dir: Path = Path("results")
    notebooks_dir: Path = Path("notebooks")
    notebooks: tuple[str, ...] = (
        "01_data.ipynb",
        "03_ablations.ipynb",
        "04_proxy_analysis.ipynb",
        "05_results.ipynb",
    )
    train_notebook: str = "02_train.ipynb"
    #: Extra parameters per notebook (file name -> {parameter: value}).
    notebook_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Training parameters shared by every run (``None`` values: from the dataset preset).
    train: dict[str, Any] = field(default_factory=dict)
    groups: tuple[GroupConfig, ...] = ()
    headline: HeadlineConfig = field(default_factory=HeadlineConfig)
    #: The claims scorecard (``results/<study>/claims.json``); see :class:`ClaimConfig`.
    claims: tuple[ClaimConfig, ...] = ()
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    #: Equal-budget hyperparameter searches (``python -m dml_study.study tune``).
    tuning: TuningConfig | None = None
    #: Absolute path of the file this config was loaded from (``None``: built in code).
    source: Path | None = None
    #: Absolute project root that relative paths were resolved against.
    root: Path = Path(".")

    @property
    def study_dir(self) -> Path:
        """Where the study's executed notebooks, HTML and index land.

        While :func:`~dml_study.study.pipeline.runner.run_study` executes the study, this is the
        staging directory ``<results>/<name>.staging`` (env ``DML_STUDY_STAGING`` = name),
        in the runner and in the notebook kernels it starts alike.
        """
        if os.environ.get(STAGING_ENV) == self.name:
            return self.results_dir / f"{self.name}{STAGING_SUFFIX}"
        return self.results_dir / self.name

    @property
    def runs_dir(self) -> Path:
        """Where training runs land (``results/runs/<run_name>``), shared by all studies."""
        return runs_root(self.results_dir)

    @property
    def executed_runs_dir(self) -> Path:
        """Executed copies of ``02_train`` for this study's runs."""
        return self.study_dir / "runs"

    def notebook_path(self, notebook: str) -> Path:
        """Absolute path of one of the study's notebooks."""
        return self.notebooks_dir / notebook

    def group(self, name: str) -> GroupConfig:
        """The ablation group called ``name``."""
        for group in self.groups:
            if group.name == name:
                return group
        valid = ", ".join(g.name for g in self.groups) or "(none)"
        raise StudyConfigError(f"no ablation group {name!r}; groups: {valid}")


# --------------------------------------------------------------------------- loading


def load_study_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Load and validate a study file; ``overrides`` replace top-level keys after loading.

    Raises :class:`StudyConfigError` naming the offending key and the valid choices.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise StudyConfigError(f"study config {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{path}: expected a mapping at the top level, got {type(raw)}")
    raw = {**raw, **overrides}
    root_key = raw.pop("root", None)
    root = (path.parent / root_key).resolve() if root_key else path.parent.parent.resolve()
    return study_config_from_dict(raw, root=root, source=path)


def study_config_from_dict(
    raw: dict[str, Any], root: str | Path = ".", source: Path | None = None
) -> StudyConfig:
    """Build a validated :class:`StudyConfig` from a plain mapping (e.g. parsed YAML)."""
    root = Path(root).resolve()
    where = str(source) if source else "study config"
    _check_keys(raw, StudyConfig, where, exclude=("source", "root"))
    if "name" not in raw:
        raise StudyConfigError(f"{where}: missing required key 'name'")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "groups":
            if not isinstance(value, list):
                raise StudyConfigError(f"{where}: groups: expected a list, got {value!r}")
            values[key] = tuple(
                _build_group(g, f"{where}: groups[{i}]") for i, g in enumerate(value)
            )
        elif key == "execution":
            values[key] = _build_execution(value, f"{where}: {key}")
        elif key == "tuning":
            values[key] = _build_tuning(value, f"{where}: {key}")
        elif key == "claims":
            if not isinstance(value, list):
                raise StudyConfigError(f"{where}: claims: expected a list, got {value!r}")
            values[key] = tuple(
                _build_claim(c, f"{where}: claims[{i}]") for i, c in enumerate(value)
            )
        elif key in ("headline", "analysis", "stats", "frozen"):
            cls = {"headline": HeadlineConfig, "analysis": AnalysisConfig,
                   "stats": StatsConfig, "frozen": FrozenConfig}[key]
            values[key] = _build_section(cls, value, f"{where}: {key}")
        else:
            values[key] = _coerce(value, field_types(StudyConfig)[key], f"{where}: {key}")
    for key in ("results_dir", "notebooks_dir", "data_root"):
        if values.get(key) is not None:
            values[key] = (root / values[key]).resolve()
    values.setdefault("results_dir", (root / "results").resolve())
    values.setdefault("notebooks_dir", (root / "notebooks").resolve())
    config = StudyConfig(**values, source=source, root=root)
    _validate(config, where)
    return config


def _build_named(cls: type, raw: Any, where: str) -> Any:
    """A list entry with a required ``name`` (a group, a claim) built as section ``cls``."""
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where}: expected a mapping, got {raw!r}")
    _check_keys(raw, cls, where)
    if "name" not in raw:
        raise StudyConfigError(f"{where}: missing required key 'name'")
    return _build_section(cls, raw, where)


def _build_group(raw: Any, where: str) -> GroupConfig:
    group = _build_named(GroupConfig, raw, where)
    if not group.variants and not group.sweep:
        raise StudyConfigError(f"{where} ({group.name}): give 'variants' and/or 'sweep'")
    if len(group.sweep) > 1:
        raise StudyConfigError(
            f"{where} ({group.name}): 'sweep' takes exactly one parameter, got {list(group.sweep)}"
        )
    if not group.seeds:
        raise StudyConfigError(f"{where} ({group.name}): 'seeds' must not be empty")
    _check_choice(group.tier, TIERS, f"{where} ({group.name}).tier")
    for dataset in group.datasets:
        _check_train_params({"dataset": dataset}, f"{where} ({group.name}).datasets")
    for variant, params in group.variants.items():
        _check_train_params(params, f"{where} ({group.name}).variants.{variant}")
    _check_train_params(group.base, f"{where} ({group.name}).base")
    for param, values in group.sweep.items():
        _check_train_params({param: values[0] if values else None}, f"{where}.sweep")
        if not values:
            raise StudyConfigError(f"{where} ({group.name}).sweep.{param}: empty list")
    at = f"{where} ({group.name})"
    if not group.protocols or len(set(group.protocols)) != len(group.protocols):
        raise StudyConfigError(f"{at}.protocols: a non-empty list of distinct protocols "
                               f"({', '.join(PROTOCOLS)}), got {list(group.protocols)}")
    for protocol in group.protocols:
        _check_choice(protocol, PROTOCOLS, f"{at}.protocols")
    if group.tuned_seeds and "tuned" not in group.protocols:
        raise StudyConfigError(f"{at}.tuned_seeds: the group has no tuned protocol; add "
                               "'tuned' to its protocols or remove tuned_seeds")
    if group.tuned_from and "tuned" not in group.protocols:
        raise StudyConfigError(f"{at}.tuned_from: the group has no tuned protocol; add "
                               "'tuned' to its protocols or remove tuned_from")
    factors = group.lr_factors
    if "lr" in group.sweep and factors:
        raise StudyConfigError(f"{at}: lr_factors multiply the cells' lr; a group that sweeps "
                               "lr cannot also have lr_factors")
    if any(not f > 0 for f in factors) or len(set(factors)) != len(factors):
        raise StudyConfigError(f"{at}.lr_factors: distinct positive numbers, got {list(factors)}")
    return group


def _build_execution(raw: Any, where: str) -> ExecutionConfig:
    """The ``execution`` section with its nested ``slurm`` section."""
    if isinstance(raw, dict) and "slurm" in raw:
        raw = dict(raw)
        slurm = _build_section(SlurmConfig, raw.pop("slurm"), f"{where}.slurm")
        return dataclasses.replace(_build_section(ExecutionConfig, raw, where), slurm=slurm)
    return _build_section(ExecutionConfig, raw, where)


def build_slurm_config(base: SlurmConfig, overrides: dict[str, Any], where: str) -> SlurmConfig:
    """``base`` with ``overrides`` (e.g. from ``--slurm key=value``) checked like the file."""
    merged = {**dataclasses.asdict(base), **overrides}
    slurm = _build_section(SlurmConfig, merged, where)
    validate_slurm(slurm, where)
    return slurm


def _build_claim(raw: Any, where: str) -> ClaimConfig:
    claim = _build_named(ClaimConfig, raw, where)
    for key, choices in (("paper", CLAIM_PAPERS), ("kind", CLAIM_KINDS),
                         ("direction", CLAIM_DIRECTIONS)):
        _check_choice(getattr(claim, key), choices, f"{where} ({claim.name}).{key}")
    return claim


def _build_tuning(raw: Any, where: str) -> TuningConfig:
    """The ``tuning`` section: nested sampler / pruner / validation sections and the arms."""
    if raw is None:
        return TuningConfig()
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where}: expected a mapping, got {raw!r}")
    _check_keys(raw, TuningConfig, where)
    raw = dict(raw)
    nested: dict[str, Any] = {}
    for key, cls in (("sampler", SamplerConfig), ("pruner", PrunerConfig),
                     ("validation", ValidationConfig), ("budget_check", BudgetCheckConfig)):
        if key in raw:
            nested[key] = _build_section(cls, raw.pop(key), f"{where}.{key}")
    if "trials" in raw:
        trials = raw.pop("trials")
        if not isinstance(trials, dict):
            raise StudyConfigError(f"{where}.trials: expected a mapping tier -> trials, e.g. "
                                   f"{{frozen: 24, fine-tuned: 6}}, got {trials!r}")
        for tier, count in trials.items():
            _check_choice(tier, TIERS, f"{where}.trials")
            _coerce(count, int, f"{where}.trials.{tier}")
        nested["trials"] = {**DEFAULT_TUNING_TRIALS, **{k: int(v) for k, v in trials.items()}}
    if "arms" in raw:
        arms = raw.pop("arms")
        if not isinstance(arms, list):
            raise StudyConfigError(f"{where}.arms: expected a list, got {arms!r}")
        nested["arms"] = tuple(_build_tuning_arm(a, f"{where}.arms[{i}]")
                               for i, a in enumerate(arms))
    tuning = dataclasses.replace(_build_section(TuningConfig, raw, where), **nested)
    _check_tuning_values(tuning, where)
    return tuning


def _build_tuning_arm(raw: Any, where: str) -> TuningArmConfig:
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where}: expected a mapping {{group, variant, space}}, "
                               f"got {raw!r}")
    _check_keys(raw, TuningArmConfig, where)
    for key in ("group", "variant", "space"):
        if key not in raw:
            raise StudyConfigError(f"{where}: missing required key {key!r}")
    raw = dict(raw)
    space_raw, fixed = raw.pop("space"), raw.pop("fixed", None) or {}
    arm = _build_section(TuningArmConfig, raw, where)
    at = f"{where} ({arm.name})"
    if not isinstance(space_raw, dict) or not space_raw:
        raise StudyConfigError(f"{at}.space: expected a non-empty mapping key -> range")
    if not isinstance(fixed, dict):
        raise StudyConfigError(f"{at}.fixed: expected a mapping key -> value, got {fixed!r}")
    space = {str(k): _build_search_param(v, f"{at}.space.{k}") for k, v in space_raw.items()}
    canonical: dict[str, str] = {}
    for key in (*space, *fixed):
        dotted = search_key(key, f"{at}.{'space' if key in space else 'fixed'}")
        if dotted in canonical:
            raise StudyConfigError(f"{at}: {canonical[dotted]!r} and {key!r} are the same key "
                                   f"({dotted}); give it once, in 'space' or in 'fixed'")
        canonical[dotted] = key
    missing = [k for k in REQUIRED_SEARCH_KEYS if k not in {search_key(s, at) for s in space}]
    if missing:
        raise StudyConfigError(
            f"{at}.space: every arm searches lr, proxy_lr_mult and head_lr_mult (issue #19); "
            f"missing {', '.join(k.split('.')[-1] for k in missing)}"
        )
    if arm.trials is not None and arm.trials < 1:
        raise StudyConfigError(f"{at}.trials: must be >= 1, got {arm.trials}")
    return dataclasses.replace(arm, space=space, fixed=dict(fixed))


def search_key(key: str, where: str = "search space") -> str:
    """The dotted config key a search-space (or ``fixed``) key names.

    ``lr`` -> ``optim.lr`` (02_train parameters and flat config keys resolve as in
    :func:`dml_study.config.resolve_key`), ``optim.lr`` stays, and ``loss.params.margin`` is
    the entry ``margin`` of the mapping ``loss.params`` (see :data:`DICT_CONFIG_FIELDS`).
    Raises :class:`StudyConfigError` for an unknown key (with a did-you-mean) or one that is
    never searched (:data:`UNSEARCHABLE_KEYS`: epochs, seed, dataset, split, ...).
    """
    parts = key.split(".")
    if len(parts) >= 3 and ".".join(parts[:2]) in DICT_CONFIG_FIELDS:
        return key
    if len(parts) >= 3:
        raise StudyConfigError(
            f"{where}: {key!r}: only the mappings {', '.join(DICT_CONFIG_FIELDS)} take a third "
            "dotted part (e.g. loss.params.margin)"
        )
    try:
        dotted = resolve_key(key)
    except ConfigError as exc:
        raise StudyConfigError(f"{where}: {exc}") from None
    if dotted in UNSEARCHABLE_KEYS:
        why = ("every trial trains the arm's epochs and is scored at its best validation "
               "epoch, which becomes the chosen epochs" if dotted == "schedule.epochs"
               else "it says which run this is, not how it trains")
        raise StudyConfigError(f"{where}: {key!r} ({dotted}) is not searched: {why}")
    if dotted in DICT_CONFIG_FIELDS:
        raise StudyConfigError(f"{where}: {key!r} is a mapping; name one of its entries, "
                               f"e.g. {dotted}.margin")
    return dotted


def _build_search_param(raw: Any, where: str) -> SearchParam:
    """One search-space entry (see :class:`SearchParam`), checked."""
    if not isinstance(raw, dict):
        raise StudyConfigError(
            f"{where}: expected {{low, high[, log | step | int]}} or {{choices: [...]}}, "
            f"got {raw!r}"
        )
    unknown = sorted(set(raw) - set(SEARCH_PARAM_KEYS))
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(SEARCH_PARAM_KEYS)}{did_you_mean(unknown[0], SEARCH_PARAM_KEYS)}"
        )
    if "choices" in raw:
        if set(raw) != {"choices"}:
            raise StudyConfigError(f"{where}: 'choices' stands alone (no low/high/log/step)")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise StudyConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise StudyConfigError(f"{where}.choices: duplicate values in {choices}")
        for c in choices:
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise StudyConfigError(f"{where}.choices: {c!r} is not a number, string, "
                                       "boolean or null")
        return SearchParam(choices=tuple(choices))
    for key in ("low", "high"):
        if key not in raw:
            raise StudyConfigError(f"{where}: missing {key!r} (or give 'choices')")
    integer = _coerce(raw.get("int", False), bool, f"{where}.int")
    number = int if integer else float
    low, high = (_coerce(raw[k], number, f"{where}.{k}") for k in ("low", "high"))
    log = _coerce(raw.get("log", False), bool, f"{where}.log")
    step = raw.get("step")
    step = None if step is None else _coerce(step, number, f"{where}.step")
    if not low < high:
        raise StudyConfigError(f"{where}: need low < high, got low={low}, high={high}")
    if log and step is not None:
        raise StudyConfigError(f"{where}: 'log' and 'step' exclude each other (Optuna)")
    if log and low <= 0:
        raise StudyConfigError(f"{where}: a log range needs low > 0, got low={low}")
    if step is not None and step <= 0:
        raise StudyConfigError(f"{where}.step: must be > 0, got {step}")
    return SearchParam(low=low, high=high, log=log, step=step, integer=integer)


def _check_tuning_values(tuning: TuningConfig, where: str) -> None:
    _check_choice(tuning.sampler.name, TUNING_SAMPLERS, f"{where}.sampler.name")
    _check_choice(tuning.pruner.name, TUNING_PRUNERS, f"{where}.pruner.name")
    objective = tuning.objective
    if not (objective in ("MAP@R", "RP") or (objective.startswith("R@")
                                              and objective[2:].isdigit())):
        raise StudyConfigError(f"{where}.objective: {objective!r}; valid: MAP@R, RP, R@<k>"
                               f"{did_you_mean(objective, ('MAP@R', 'RP', 'R@1'))}")
    for key, value in (("sampler.startup_trials", tuning.sampler.startup_trials),
                       ("pruner.startup_trials", tuning.pruner.startup_trials),
                       ("pruner.warmup_epochs", tuning.pruner.warmup_epochs)):
        if value < 0:
            raise StudyConfigError(f"{where}.{key}: must be >= 0, got {value}")
    v = tuning.validation
    if v.folds < 2:
        raise StudyConfigError(f"{where}.validation.folds: must be >= 2, got {v.folds}")
    if not v.fold_ids or len(set(v.fold_ids)) != len(v.fold_ids):
        raise StudyConfigError(f"{where}.validation.fold_ids: a non-empty list of distinct "
                               f"folds, got {list(v.fold_ids)}")
    bad = [f for f in v.fold_ids if not 0 <= f < v.folds]
    if bad:
        raise StudyConfigError(f"{where}.validation.fold_ids: {bad} outside 0..{v.folds - 1}")
    for tier, count in tuning.trials.items():
        if count < 1:
            raise StudyConfigError(f"{where}.trials.{tier}: must be >= 1, got {count}")
    if tuning.batch_trials < 1:
        raise StudyConfigError(f"{where}.batch_trials: must be >= 1, got {tuning.batch_trials}")
    names = [a.name for a in tuning.arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyConfigError(f"{where}.arms: arm(s) {', '.join(duplicates)} listed twice")


def arm_budget(config: StudyConfig, arm: TuningArmConfig) -> int:
    """Trials of ``arm``: its own ``trials``, else ``tuning.trials`` of its group's tier."""
    assert config.tuning is not None
    return arm.trials if arm.trials is not None else \
        config.tuning.trials[config.group(arm.group).tier]


def arm_datasets(config: StudyConfig, arm: TuningArmConfig) -> tuple[str, ...]:
    """Datasets ``arm`` is searched on: its own, else its group's (one dataset: the group's
    ``base`` or the study's ``train`` dataset)."""
    if arm.datasets:
        return arm.datasets
    group = config.group(arm.group)
    if group.datasets:
        return group.datasets
    dataset = group.base.get("dataset") or config.train.get("dataset")
    return (dataset,) if dataset else ()


def _validate_tuning(config: StudyConfig, where: str) -> None:
    """Arms name existing groups / variants; every claim's arms have equal budgets."""
    assert config.tuning is not None
    at = f"{where}: tuning"
    groups = [g.name for g in config.groups]
    for arm in config.tuning.arms:
        if arm.group not in groups:
            raise StudyConfigError(f"{at}.arms ({arm.name}).group: {arm.group!r} is not a group; "
                                   f"groups: {', '.join(groups)}{did_you_mean(arm.group, groups)}")
        variants = _variant_names(config.group(arm.group))
        if arm.variant not in variants:
            raise StudyConfigError(
                f"{at}.arms ({arm.name}).variant: {arm.variant!r} is not a variant of group "
                f"{arm.group!r}; variants: {', '.join(variants)}"
                f"{did_you_mean(arm.variant, variants)}"
            )
        for dataset in arm.datasets:
            _check_choice(dataset, train_choices()["dataset"], f"{at}.arms ({arm.name}).datasets")
        if not arm_datasets(config, arm):
            raise StudyConfigError(f"{at}.arms ({arm.name}): no dataset (give 'datasets')")
    tuned = {arm.name: arm for arm in config.tuning.arms}
    for claim in config.claims:
        roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
        for group in claim.all_groups:
            # a group tuned from another (an lr grid around its values) compares those arms
            source = config.group(group).tuned_group
            names = [f"{source}/{getattr(claim, role)}" for role in roles]
            budgets = {n: ((arm_budget(config, tuned[n]), arm_datasets(config, tuned[n]))
                           if n in tuned else None) for n in names}
            if len(set(budgets.values())) > 1:
                described = ", ".join(
                    f"{n} ({'not tuned' if b is None else f'{b[0]} trials on ' + ', '.join(b[1])})"
                    for n, b in budgets.items())
                raise StudyConfigError(
                    f"{at}: claim {claim.name!r} compares {described}: every arm of a claim is "
                    "tuned with the same number of trials per tier on the same datasets (equal "
                    "budgets, MLRC); give these arms the same 'trials' and 'datasets', or tune "
                    "none of them"
                )
    if config.tuning.budget_check is not None:
        _validate_budget_check(config, config.tuning.budget_check, f"{at}.budget_check")


def _validate_budget_check(config: StudyConfig, check: BudgetCheckConfig, at: str) -> None:
    """Arms are tuned arms on their datasets; a claim's compared arms are checked together."""
    assert config.tuning is not None
    names = [a.name for a in config.tuning.arms]
    if not check.arms:
        raise StudyConfigError(f"{at}.arms: name the arms whose budget is checked, e.g. "
                               f"[{', '.join(names[:2])}]")
    if check.factor < 2:
        raise StudyConfigError(f"{at}.factor: must be >= 2 (times the trials), got {check.factor}")
    for name in check.arms:
        if name not in names:
            raise StudyConfigError(f"{at}.arms: {name!r} is not a tuned arm; arms: "
                                   f"{', '.join(names)}{did_you_mean(name, names)}")
        datasets = arm_datasets(config, config.tuning.arm(name))
        for dataset in check.datasets:
            if dataset not in datasets:
                raise StudyConfigError(f"{at}.datasets: arm {name} is not tuned on {dataset!r} "
                                       f"(it is on {', '.join(datasets)})")
    checked = set(check.arms)
    for claim in config.claims:
        roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
        for group in claim.all_groups:
            arms = {f"{group}/{getattr(claim, role)}" for role in roles}
            if arms & checked and not arms <= checked:
                raise StudyConfigError(
                    f"{at}.arms: claim {claim.name!r} compares {', '.join(sorted(arms))}; check "
                    "the budget of all of them or of none (a verdict needs both arms)")


def _validate_protocols(config: StudyConfig, where: str) -> None:
    """Every tuned cell has a tuned arm: ``<tuned group>/<variant>`` on each of its datasets."""
    for group in config.groups:
        if "tuned" not in group.protocols:
            continue
        at = f"{where}: groups ({group.name})"
        if group.tuned_from:
            names = [g.name for g in config.groups]
            if group.tuned_from not in names:
                raise StudyConfigError(f"{at}.tuned_from: {group.tuned_from!r} is not a group; "
                                       f"groups: {', '.join(names)}"
                                       f"{did_you_mean(group.tuned_from, names)}")
            source = config.group(group.tuned_from)
            if source.tier != group.tier:
                raise StudyConfigError(f"{at}.tuned_from: {source.name} is a {source.tier} "
                                       f"group, {group.name} a {group.tier} one")
        if config.tuning is None:
            raise StudyConfigError(f"{at}.protocols: 'tuned' reads the tuned arms of the study's "
                                   "'tuning' section, which this study has none of "
                                   "(docs/tuning.md)")
        arms = {a.name: a for a in config.tuning.arms}
        datasets = group.datasets or (group.base.get("dataset") or config.train.get("dataset"),)
        for variant in _variant_names(group):
            name = f"{group.tuned_group}/{variant}"
            if name not in arms:
                raise StudyConfigError(
                    f"{at}: its tuned cells of variant {variant!r} read the tuned arm {name}, "
                    f"which is not in tuning.arms; add it (group: {group.tuned_group}, variant: "
                    f"{variant}) or drop 'tuned' from the group's protocols")
            missing = [d for d in datasets if d not in arm_datasets(config, arms[name])]
            if missing:
                raise StudyConfigError(
                    f"{at}: tuned arm {name} is not tuned on {', '.join(map(str, missing))}, "
                    "where the group has tuned cells; add the datasets to the arm")


def _build_section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where}: expected a mapping, got {raw!r}")
    _check_keys(raw, cls, where)
    types_ = field_types(cls)
    return cls(**{k: _coerce(v, types_[k], f"{where}.{k}") for k, v in raw.items()})


def _check_keys(raw: dict[str, Any], cls: type, where: str, exclude: tuple[str, ...] = ()) -> None:
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(valid)}{did_you_mean(unknown[0], valid)}"
        )


def _check_train_params(params: dict[str, Any], where: str) -> None:
    unknown = sorted(set(params) - set(STUDY_TRAIN_PARAMETERS))
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown training parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(STUDY_TRAIN_PARAMETERS)}"
        )
    reserved = sorted(set(params) & set(RESERVED_TRAIN_PARAMETERS))
    if reserved:
        raise StudyConfigError(
            f"{where}: {', '.join(reserved)} are set by the study for every run (seeds come "
            "from the group's 'seeds'); remove them"
        )
    choices = train_choices()
    for key, value in params.items():
        if key in choices and value is not None:
            _check_choice(value, choices[key], f"{where}.{key}")


def _check_choice(value: Any, choices: Sequence[str], where: str) -> None:
    """Raise :class:`StudyConfigError` naming ``where`` when ``value`` is not a choice."""
    if value not in choices:
        raise StudyConfigError(
            f"{where}: invalid value {value!r}; valid: {', '.join(map(str, choices))}"
            f"{did_you_mean(value, choices)}"
        )


def _validate(config: StudyConfig, where: str) -> None:
    if config.recipe not in RECIPES:
        raise StudyConfigError(f"{where}: recipe {config.recipe!r}; valid: {', '.join(RECIPES)}")
    for dataset in config.datasets:
        _check_choice(dataset, train_choices()["dataset"], f"{where}: datasets")
    _check_train_params(config.train, f"{where}: train")
    _check_choice(config.frozen.batch_mode, FROZEN_BATCH_MODES, f"{where}: frozen.batch_mode")
    if config.frozen.workers is not None and config.frozen.workers < 1:
        raise StudyConfigError(f"{where}: frozen.workers must be >= 1 or null, got "
                               f"{config.frozen.workers}")
    if config.frozen.batch_runs < 1:
        raise StudyConfigError(f"{where}: frozen.batch_runs must be >= 1, got "
                               f"{config.frozen.batch_runs}")
    names = [g.name for g in config.groups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyConfigError(f"{where}: duplicate group name(s) {duplicates}")
    unknown_nb = sorted(set(config.notebook_parameters) - set(config.notebooks))
    if unknown_nb:
        raise StudyConfigError(
            f"{where}: notebook_parameters for {unknown_nb} which are not in notebooks "
            f"({', '.join(config.notebooks)})"
        )
    if config.groups and config.headline.group in names:
        group = config.group(config.headline.group)
        variants = _variant_names(group)
        for role in ("baseline", "treatment"):
            value = getattr(config.headline, role)
            if value not in variants:
                raise StudyConfigError(
                    f"{where}: headline.{role}: {value!r} is not a variant of group "
                    f"{group.name!r}; variants: {', '.join(variants)}"
                )
    elif config.groups:
        raise StudyConfigError(
            f"{where}: headline.group: {config.headline.group!r} is not a group; groups: "
            f"{', '.join(names)}"
        )
    _validate_execution(config.execution, f"{where}: execution")
    _check_train_params(config.frozen.train, f"{where}: frozen.train")
    for dataset, params in config.frozen.datasets.items():
        _check_train_params({"dataset": dataset, **params}, f"{where}: frozen.datasets")
    valid_features = ("views", "feature_seed", "max_train_per_class", "max_test_per_class")
    for dataset, settings in config.frozen.features.items():
        unknown = sorted(set(settings) - set(valid_features))
        if unknown:
            raise StudyConfigError(
                f"{where}: frozen.features.{dataset}: unknown key(s) {unknown}; valid: "
                f"{', '.join(valid_features)}"
            )
    if config.frozen.views < 1:
        raise StudyConfigError(f"{where}: frozen.views must be >= 1, got {config.frozen.views}")
    for claim in config.claims:
        _validate_claim(config, claim, names, where)
    if not 0.0 < config.stats.confidence < 1.0:
        raise StudyConfigError(f"{where}: stats.confidence must lie in (0, 1)")
    if config.tuning is not None:
        _validate_tuning(config, where)
    _validate_protocols(config, where)


#: Launchers of the grid (see :mod:`dml_study.study.launch.launcher`).
LAUNCHERS: tuple[str, ...] = ("local", "slurm")


def _validate_execution(execution: ExecutionConfig, where: str) -> None:
    if execution.launcher not in LAUNCHERS:
        raise StudyConfigError(
            f"{where}.launcher: {execution.launcher!r}; valid: {', '.join(LAUNCHERS)}"
        )
    if execution.max_parallel < 1:
        raise StudyConfigError(f"{where}.max_parallel: must be >= 1, got {execution.max_parallel}")
    if execution.threads_per_run is not None and execution.threads_per_run < 1:
        raise StudyConfigError(f"{where}.threads_per_run: must be >= 1 or null")
    validate_slurm(execution.slurm, f"{where}.slurm")


def validate_slurm(slurm: SlurmConfig, where: str) -> None:
    """Raise :class:`StudyConfigError` for impossible SLURM resources."""
    if slurm.cluster not in (None, "slurm", "local"):
        raise StudyConfigError(f"{where}.cluster: {slurm.cluster!r}; valid: null, slurm, local")
    for key in ("time_min", "cpus_per_run", "array_parallelism"):
        if getattr(slurm, key) < 1:
            raise StudyConfigError(f"{where}.{key}: must be >= 1, got {getattr(slurm, key)}")
    if slurm.gpus_per_run < 0 or slurm.max_requeues < 0:
        raise StudyConfigError(f"{where}: gpus_per_run and max_requeues must be >= 0")


def _validate_claim(
    config: StudyConfig, claim: ClaimConfig, groups: list[str], where: str
) -> None:
    at = f"{where}: claims ({claim.name})"
    if not claim.all_groups:
        raise StudyConfigError(f"{at}: give 'group' (and/or 'groups')")
    for group in claim.all_groups:
        if group not in groups:
            raise StudyConfigError(
                f"{at}.group: {group!r} is not a group; groups: {', '.join(groups)}"
                f"{did_you_mean(group, groups)}"
            )
        variants = _variant_names(config.group(group))
        roles = ("baseline",) if claim.kind == "correlation" else ("baseline", "treatment")
        for role in roles:
            value = getattr(claim, role)
            if value not in variants:
                raise StudyConfigError(
                    f"{at}.{role}: {value!r} is not a variant of group {group!r}; "
                    f"variants: {', '.join(variants)}{did_you_mean(value, variants)}"
                )
        if claim.kind == "robustness" and len(config.group(group).lr_factors) < 2:
            raise StudyConfigError(
                f"{at}: a robustness claim compares each arm over an lr grid; group {group!r} "
                "needs 'lr_factors' (at least 2, e.g. [0.1, 0.316, 1.0, 3.16, 10.0])")
    if claim.kind == "robustness":
        parts = claim.metric.split(":")
        ok = (len(parts) == 3 and parts[0] == "lrs_within" and _is_number(parts[1])
              and float(parts[1]) >= 0) or (len(parts) == 2 and parts[0] == "mean_drop")
        if not ok:
            raise StudyConfigError(
                f"{at}.metric: {claim.metric!r}; a robustness metric is lrs_within:<pp>:<metric> "
                "(lrs of the grid within <pp> percentage points of the arm's best, e.g. "
                "lrs_within:1:R@1) or mean_drop:<metric> (e.g. mean_drop:R@1)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _variant_names(group: GroupConfig) -> list[str]:
    return [name for name, _ in group.variant_overrides()]


# --------------------------------------------------------------------------- coercion


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field annotation, converting lists to tuples."""
    return coerce(value, annotation, where, StudyConfigError)
