"""Helpers of the tuning tests: a fake trainer, a real feature cache, tiny study files.

:func:`write_train_features` writes the frozen tier's real version-2 feature cache for a
tiny study: the training file (``…-train.npz``, the one a validation run reads) of generated
features of :data:`TRAIN_CLASSES` classes, at the path
:func:`~dml_study.study.tiers.frozen.feature_cache_path` gives for the study's settings, in
``$DML_STUDY_CACHE``. The package's own
:class:`~dml_study.study.tune.trainers.FrozenTrialTrainer` then trains every trial as the
study would: ``extract_features`` finds the training file and cuts it into the fold's kept
and held-out classes (``validation_features``), ``train_frozen`` runs through the batch seam
under the test-split guard and writes ``validation_classes.json``. No test file exists, so
no trial could score on the test split even if the guard failed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dml_study.study.tune.objective import RunOutcome, TrialRun

TRAIN_CLASSES = 16


# --------------------------------------------------------------------------- a fake trainer


def fake_value(params: dict[str, Any], epoch: int, epochs: int) -> float:
    """A smooth validation curve: best at lr = 1e-3, proxy x100; rises then falls."""
    lr = float(params.get("lr") or 1e-3)
    mult = float((params.get("overrides") or {}).get("proxy_lr_mult", 100.0))
    peak = math.exp(-(math.log10(lr) + 3.0) ** 2 - 0.3 * (math.log10(mult) - 2.0) ** 2)
    shape = 1.0 - ((epoch - 0.6 * epochs) / epochs) ** 2
    return round(0.5 * peak * shape + 0.01 * params.get("val_fold", 0), 6)


class FakeTrainer:
    """A trainer of the :class:`~dml_study.study.tune.trainers.TrialTrainer` protocol that
    computes :func:`fake_value` records instantly (no torch), and can be told to fail."""

    tier = "frozen"
    can_prune = True

    def __init__(self, epochs: int = 5, *, crash_after: int | None = None,
                 fail_trials: Sequence[int] = (), diverge_trials: Sequence[int] = ()):
        self.epochs = epochs
        self.crash_after = crash_after
        self.fail_trials = set(fail_trials)
        self.diverge_trials = set(diverge_trials)
        self.trained: list[TrialRun] = []

    def check(self, plan: Any) -> None:
        pass

    def run_name(self, params: dict[str, Any]) -> str:
        key = json.dumps(params, sort_keys=True, default=str)
        return f"fake-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def training_class_ids(self, plan: Any) -> np.ndarray:
        return np.arange(TRAIN_CLASSES)

    def train(self, runs: Sequence[TrialRun], on_epoch: Any = None) -> list[RunOutcome]:
        outcomes = []
        for run in runs:
            if self.crash_after is not None and len(self.trained) >= self.crash_after:
                raise KeyboardInterrupt("simulated kill")
            self.trained.append(run)
            name = self.run_name(run.params)
            if run.trial in self.fail_trials:
                outcomes.append(RunOutcome(name, "failed", error="simulated failure"))
                continue
            records, status = [], "trained"
            for epoch in range(1, self.epochs + 1):
                if run.trial in self.diverge_trials and epoch == 3:
                    status = "diverged"
                    break
                record = {"epoch": epoch, "MAP@R": fake_value(run.params, epoch, self.epochs),
                          "R@1": 2 * fake_value(run.params, epoch, self.epochs)}
                records.append(record)
                if on_epoch is not None and on_epoch(run, record) and self.can_prune:
                    status = "pruned"
                    break
            outcomes.append(RunOutcome(name, status, records, 0.0,
                                       "non-finite loss" if status == "diverged" else None))
        return outcomes


# --------------------------------------------------------------------------- a real feature cache


def _generated_train_file(classes: int = TRAIN_CLASSES, per_class: int = 6, dim: int = 16,
                          views: int = 2, noise: float = 0.9) -> dict[str, np.ndarray]:
    """The arrays of a training feature file (``frozen._extract_missing``'s keys)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))

    def sample(shape: tuple[int, ...]) -> np.ndarray:
        return (centres[labels] + noise * rng.normal(size=shape)).astype(np.float16)

    return {"train_views": sample((views, len(labels), dim)),
            "train_eval": sample((len(labels), dim)),
            "train_labels": labels.astype(np.int64),
            "class_names": np.asarray([f"class {i}" for i in range(classes)])}


def write_train_features(study: Path, cache_dir: Path, **generated: Any) -> list[Path]:
    """Write the ``-train.npz`` feature file of every frozen search of ``study`` into
    ``cache_dir/frozen_features/`` (what ``$DML_STUDY_CACHE=cache_dir`` reads); their paths."""
    from dml_study.study.plan.config import load_study_config
    from dml_study.study.tiers.frozen import feature_cache_path
    from dml_study.study.tune import plan_searches
    from dml_study.study.tune.trainers import FrozenTrialTrainer, first_run_parameters

    config = load_study_config(study)
    trainer = FrozenTrialTrainer(config)
    paths = []
    for plan in plan_searches(config):
        if plan.tier != "frozen":
            continue
        params = first_run_parameters(plan)
        run_config, _ = trainer.experiment(params)
        path = feature_cache_path(run_config, trainer.settings(params), cache_dir, "train")
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **_generated_train_file(**generated))
        paths.append(path)
    return sorted(set(paths))


# --------------------------------------------------------------------------- study files


def tiny_tuning_study(root: Path, *, trials: int = 4, epochs: int = 4, batch: int = 1,
                      pruner: str = "none", folds: Sequence[int] = (0,),
                      extra_arms: Sequence[dict[str, Any]] = (), dataset: str = "icons",
                      features: dict[str, Any] | None = None, **extra: Any) -> Path:
    """``root/studies/tiny.yaml``: two frozen arms (no SO / SO) on ``dataset``, ``trials``
    each; ``features``: the dataset's ``frozen.features`` settings; ``extra``: more top-level
    keys of the study file (``data_root``, ``results_dir``)."""
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True},
             "proxy_lr_mult": {"low": 1.0, "high": 100.0, "log": True},
             "head_lr_mult": {"low": 1.0, "high": 10.0, "log": True}}
    study = {
        "name": "tiny",
        "datasets": [dataset],
        "train": {"dataset": dataset, "loss": "proxy_anchor", "device": "cpu",
                  "overrides": {"eval.nmi": False, "eval.ks": [1, 2]}},
        "frozen": {"views": 2, "train": {"epochs": epochs, "embedding_dim": 8, "batch_size": 16,
                                         "m_per_class": 2},
                   "features": {dataset: features} if features else {}},
        "groups": [{"name": "frozen_so", "tier": "frozen", "datasets": [dataset],
                    "seeds": [0], "variants": {"no_so": {"so_lambda": 0.0},
                                               "so": {"so_lambda": 0.1}}}],
        "headline": {"group": "frozen_so", "baseline": "no_so", "treatment": "so"},
        "claims": [{"name": "so_r1", "group": "frozen_so", "baseline": "no_so",
                    "treatment": "so", "metric": "R@1"}],
        "tuning": {
            "sampler": {"name": "tpe", "seed": 0, "startup_trials": 2},
            "pruner": {"name": pruner, "startup_trials": 1, "warmup_epochs": 1},
            "validation": {"folds": 4, "fold_ids": list(folds), "seed": 0},
            "trials": {"frozen": trials},
            "batch_trials": batch,
            "arms": [
                {"group": "frozen_so", "variant": "no_so", "space": space},
                {"group": "frozen_so", "variant": "so",
                 "space": {**space, "so_lambda": {"low": 1e-3, "high": 1.0, "log": True}}},
                *extra_arms,
            ],
        },
    }
    study.update(extra)
    path = root / "studies" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path
