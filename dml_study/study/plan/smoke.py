"""Smoke mode: a study's whole grid and every notebook with a tiny CPU recipe, in minutes.

``python -m dml_study.study --config studies/paper.yaml --smoke --results-dir DIR`` runs
the same groups, variants and notebooks as the real study (seeds and tuned seeds trimmed to
the first two of each group, the least a paired comparison with a confidence interval
needs; lr grids to three factors; searches of the ``tuning`` section trimmed to two trials
per arm on one fold, and run first, so the tuned cells have their ``chosen.json``), but every
run trains a randomly initialised two-block DeiT-Tiny on 32-px images for one epoch with
batches of 8 (4 classes x 2 images) on the CPU. Its numbers mean nothing; what it checks is
that

* the data root that is set ($DML_DATA_ROOT or the study's ``data_root``) holds every
  benchmark in its official layout (a missing or malformed dataset fails in seconds, before
  any training, with the loader's error naming the file),
* every cell of the grid trains (loss options, SO forms, adaptive margins with their text
  embeddings) and every notebook (data overview, ablations, proxy analysis, results)
  executes on the runs it produced, so a crash in notebook 04 is found before GPU days.

Small classes do not stop it: the m-per-class sampler tops up classes smaller than
``m_per_class`` with replacement (a warning says so).

The notebooks re-read the study file they are given, so smoke mode writes a derived study
file, ``DIR/<name>.smoke.yaml``, with the tiny recipe merged into the study's ``train``
parameters and into every group's ``base`` and variants (the keys below win over the
study's; sweeps are kept as they are), ``results_dir: DIR`` and ``root`` pointing at the
original project, and runs that.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dml_study.atomic_io import atomic_write_text
from dml_study.study.plan.config import StudyConfig, StudyConfigError, load_study_config

#: The tiny CPU recipe: training parameters of ``02_train`` that replace the study's.
SMOKE_TRAIN: dict[str, Any] = {
    "backbone": "deit_tiny_patch16_224",  # 5.7M parameters; follows image_size (timm resize)
    "pretrained": False,  # no weight download: checks the pipeline, not the accuracy
    "image_size": 32,
    "embedding_dim": 32,
    "epochs": 1,
    "batch_size": 8,
    "m_per_class": 2,
    "device": "cpu",
    "num_workers": 0,
    "quiet": True,
}

#: Config overrides (dotted keys) merged into every run's ``overrides``.
SMOKE_OVERRIDES: dict[str, Any] = {
    "schedule.freeze_backbone_epochs": 0,  # the single epoch trains the whole model
    "schedule.step_epochs": 1,
    "eval.every_n_epochs": 1,
    "data.eval_batch_size": 64,
    "data.cache_decoded": False,
    "run.amp": "off",
    "model.timm_kwargs": {"depth": 2},  # 2 of DeiT-Tiny's 12 blocks: same code, ~6x cheaper
}

#: Seeds kept per group: two, the least a paired comparison with a CI needs.
SMOKE_MAX_SEEDS = 2

#: Factors kept of an lr grid (``lr_factors``): the smallest, the middle and the largest.
SMOKE_MAX_LR_FACTORS = 3

#: Trials per arm of a smoke study's searches (``tune --smoke``): the least that exercises
#: asking, telling and choosing; one validation fold, no pruning, random start.
SMOKE_TUNING_TRIALS = 2

#: Validation folds of a smoke study's searches at most: two, so a search holds out half
#: the training classes and small data still fill a smoke batch from the rest (the test
#: fixtures: 8 training classes, 4 held out, 4 left = the 4 classes of one batch of 8).
SMOKE_VALIDATION_FOLDS = 2

#: Title prefix of a smoke study, so no page can be mistaken for results.
SMOKE_TITLE = "SMOKE TEST (tiny CPU recipe: numbers are meaningless)"


def _merge_run_params(params: dict[str, Any] | None, forced_only: bool) -> dict[str, Any]:
    """``params`` with the smoke recipe applied (``forced_only``: only keys already there)."""
    out = dict(params or {})
    for key, value in SMOKE_TRAIN.items():
        if not forced_only or key in out:
            out[key] = value
    if not forced_only or "overrides" in out:
        out["overrides"] = {**(out.get("overrides") or {}), **SMOKE_OVERRIDES}
    return out


def smoke_study_dict(raw: dict[str, Any], results_dir: Path, root: Path) -> dict[str, Any]:
    """The derived study mapping (see module docstring); ``raw`` is the parsed study file."""
    out = copy.deepcopy(raw)
    out["train"] = _merge_run_params(out.get("train"), forced_only=False)
    for group in out.get("groups") or []:
        swept = set((group.get("sweep") or {}).keys())
        clash = swept & set(SMOKE_TRAIN)
        if clash:
            raise StudyConfigError(
                f"group {group.get('name')!r} sweeps {sorted(clash)}, which smoke mode fixes; "
                "smoke mode cannot run that sweep as written"
            )
        group["seeds"] = list(group.get("seeds") or [0])[:SMOKE_MAX_SEEDS]
        if group.get("tuned_seeds"):
            group["tuned_seeds"] = list(group["tuned_seeds"])[:SMOKE_MAX_SEEDS]
        if len(group.get("lr_factors") or []) > SMOKE_MAX_LR_FACTORS:
            factors = sorted(group["lr_factors"])
            group["lr_factors"] = [factors[0], factors[len(factors) // 2], factors[-1]]
        group["base"] = _merge_run_params(group.get("base"), forced_only=True)
        group["variants"] = {
            name: _merge_run_params(params, forced_only=True)
            for name, params in (group.get("variants") or {}).items()
        }
        if not group["variants"]:
            del group["variants"]
    out["results_dir"] = str(results_dir)
    out["root"] = str(root)
    out["title"] = f"{SMOKE_TITLE}: {raw.get('title') or raw.get('name')}"
    out["recipe"] = "cpu"
    analysis = dict(out.get("analysis") or {})
    analysis["tsne_max_points"] = min(int(analysis.get("tsne_max_points", 1500)), 300)
    analysis["tsne_perplexity"] = min(float(analysis.get("tsne_perplexity", 30.0)), 5.0)
    out["analysis"] = analysis
    if out.get("tuning"):
        out["tuning"] = smoke_tuning_dict(out["tuning"])
    stats = dict(out.get("stats") or {})
    stats["bootstrap_resamples"] = min(int(stats.get("bootstrap_resamples", 10000)), 1000)
    out["stats"] = stats
    return out


def smoke_tuning_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``tuning`` section in tiny form: :data:`SMOKE_TUNING_TRIALS` trials per arm and
    tier, at most :data:`SMOKE_VALIDATION_FOLDS` folds of which the first only, no pruner;
    spaces and arms are kept."""
    out = copy.deepcopy(raw)
    out["trials"] = {tier: SMOKE_TUNING_TRIALS for tier in ("frozen", "fine-tuned")}
    for arm in out.get("arms") or []:
        arm.pop("trials", None)
    validation = dict(out.get("validation") or {})
    validation["folds"] = min(int(validation.get("folds", SMOKE_VALIDATION_FOLDS)),
                              SMOKE_VALIDATION_FOLDS)
    ids = [int(f) for f in validation.get("fold_ids") or [0] if int(f) < validation["folds"]]
    validation["fold_ids"] = ids[:1] or [0]
    out["validation"] = validation
    out["pruner"] = {"name": "none"}
    sampler = dict(out.get("sampler") or {})
    sampler["startup_trials"] = min(int(sampler.get("startup_trials", 10)), SMOKE_TUNING_TRIALS)
    out["sampler"] = sampler
    return out


def derived_study_file(
    config_path: str | Path, results_dir: str | Path, *, smoke: bool
) -> Path:
    """Write ``<results_dir>/<name>[.smoke].yaml`` (the study with ``results_dir`` set and,
    with ``smoke``, the tiny recipe) and return its path; validated by loading it."""
    source = load_study_config(config_path)  # validates the original first
    raw = yaml.safe_load(Path(source.source).read_text(encoding="utf-8")) or {}
    raw.pop("root", None)
    results_dir = Path(results_dir).expanduser().resolve()
    if smoke:
        raw = smoke_study_dict(raw, results_dir, source.root)
    else:
        raw = {**raw, "results_dir": str(results_dir), "root": str(source.root)}
    if raw.get("data_root") is not None:
        raw["data_root"] = str((source.root / raw["data_root"]).resolve())
    for key in ("notebooks_dir",):
        if raw.get(key) is not None:
            raw[key] = str((source.root / raw[key]).resolve())
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{source.name}{'.smoke' if smoke else ''}.yaml"
    header = (
        f"# Derived from {source.source} by python -m dml_study.study"
        f"{' --smoke' if smoke else ''} --results-dir {results_dir}; do not edit.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    load_study_config(path)
    return path


def check_data(config: StudyConfig) -> None:
    """Open every dataset split of the study under its data root (raises the loader's error).

    Reading the index files and listing the images takes seconds, so a user learns about a
    missing or malformed benchmark before anything trains.
    """
    from dml_study.data import get_dataset
    from dml_study.data.registry import dataset_info

    root = None if config.data_root is None else str(config.data_root)
    for dataset in config.datasets:
        for split in dataset_info(dataset).splits:
            get_dataset(dataset, split, data_root=root)
