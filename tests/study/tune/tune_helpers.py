"""Helpers of the tuning tests: a fake trainer, a stand-in for contract A, tiny study files.

**The stand-in for contract A** (the validation split of issue #19 part 1, built by another
branch; this file goes when it lands). :class:`StandinFrozenTrainer` is the package's
:class:`~dml_study.study.tune.trainers.FrozenTrialTrainer` with the three steps contract A
provides replaced, and nothing else:

* :meth:`experiment`: ``split``/``val_*`` are not config keys yet, so they are taken out of
  the parameters and put into the run's name (the tier identity, as contract A puts them in
  the config hash);
* :meth:`features`: generated features of 16 training classes; the fold's classes (classes
  permuted by ``val_seed``, cut into ``val_folds`` folds) are held out and become the
  evaluation set (their images' evaluation view), the others are trained on; there are no
  test features at all, so no trial can score on the test split;
* :meth:`guard`: counts the trials trained under it; after training each run writes
  ``validation_classes.json`` as contract A's runs do.

Everything else is the package's: run naming, run directories, ``train_frozen`` through the
batch seam, per-epoch reports, pruning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dml_study.study.tune.objective import VALIDATION_PARAMETERS, RunOutcome, TrialRun

TRAIN_CLASSES = 16
TEST_CLASSES = 8


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

    def check(self) -> None:
        pass

    def run_name(self, params: dict[str, Any]) -> str:
        key = json.dumps(params, sort_keys=True, default=str)
        return f"fake-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def test_class_names(self, dataset: str) -> set[str]:
        return {f"test class {i}" for i in range(TEST_CLASSES)}

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


# --------------------------------------------------------------------------- contract A stand-in


def _base_features(dim: int = 16, per_class: int = 6, views: int = 2, noise: float = 0.9):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(TRAIN_CLASSES, dim))
    labels = np.repeat(np.arange(TRAIN_CLASSES), per_class)

    def sample(n_views: int | None = None):
        shape = (len(labels), dim) if n_views is None else (n_views, len(labels), dim)
        return (centres[labels] + noise * rng.normal(size=shape)).astype(np.float16)

    return sample(views), sample(), labels


def standin_split(folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train class ids, validation class ids) of the stand-in: permute, cut, take ``fold``."""
    order = np.random.default_rng(seed).permutation(TRAIN_CLASSES)
    parts = np.array_split(order, folds)
    return np.sort(np.concatenate([p for i, p in enumerate(parts) if i != fold])), \
        np.sort(parts[fold])


def _make_standin_class():
    from dml_study.study.plan.grid import experiment_config, frozen_tier_identity, make_run_name
    from dml_study.study.tiers.frozen import FrozenFeatures
    from dml_study.study.tune.trainers import FrozenTrialTrainer

    class StandinFrozenTrainer(FrozenTrialTrainer):
        """The package's frozen trainer with contract A's steps stood in (module docstring)."""

        guarded_runs = 0

        def check(self) -> None:
            pass

        @contextlib.contextmanager
        def guard(self) -> Iterator[None]:
            yield

        @staticmethod
        def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            clean = {k: v for k, v in params.items() if k not in VALIDATION_PARAMETERS}
            return clean, {k: params[k] for k in VALIDATION_PARAMETERS if k in params}

        def run_name(self, params: dict[str, Any]) -> str:
            clean, split = self._split(params)
            tier = {**frozen_tier_identity(self.config, clean.get("dataset")), **split}
            return make_run_name(clean, tier=tier)

        def experiment(self, params: dict[str, Any]) -> tuple[Any, str]:
            clean, split = self._split(params)
            assert split.get("split") == "validation", "every trial is a validation run"
            name = self.run_name(params)
            clean = {k: v for k, v in clean.items() if k not in ("quiet", "num_workers")}
            return experiment_config({**clean, "run_name": name,
                                      "results_dir": str(self.results_dir)}), name

        def batch_key(self, config: Any, settings: Any, params: dict[str, Any]) -> str:
            return json.dumps([params.get(k) for k in VALIDATION_PARAMETERS])

        def features(self, config: Any, settings: Any, params: dict[str, Any]) -> Any:
            views, evals, labels = _base_features()
            train_ids, _ = standin_split(params["val_folds"], params["val_fold"],
                                         params["val_seed"])
            train = np.isin(labels, train_ids)
            relabel = {int(c): i for i, c in enumerate(train_ids)}
            return FrozenFeatures(
                train_views=views[:, train], train_eval=evals[train],
                train_labels=np.array([relabel[int(c)] for c in labels[train]]),
                test=evals[~train], test_labels=labels[~train],
                class_names=tuple(f"class {i}" for i in train_ids), key="standin",
            )

        def train(self, runs: Sequence[TrialRun], on_epoch: Any = None) -> list[RunOutcome]:
            outcomes = super().train(runs, on_epoch)
            type(self).guarded_runs += sum(o.status != "reused" for o in outcomes)
            for run, outcome in zip(runs, outcomes, strict=True):
                p = run.params
                train_ids, val_ids = standin_split(p["val_folds"], p["val_fold"], p["val_seed"])
                record = {"split": "validation", "folds": p["val_folds"], "fold": p["val_fold"],
                          "seed": p["val_seed"],
                          "train_classes": [f"class {i}" for i in train_ids],
                          "validation_classes": [f"class {i}" for i in val_ids]}
                Path(outcome.run_dir).mkdir(parents=True, exist_ok=True)
                (Path(outcome.run_dir) / "validation_classes.json").write_text(
                    json.dumps(record), encoding="utf-8")
            return outcomes

        def test_class_names(self, dataset: str) -> set[str]:
            return {f"test class {i}" for i in range(TEST_CLASSES)}

    return StandinFrozenTrainer


def standin_trainer_factory(config: Any, plan: Any, launcher: Any) -> Any:
    """``make_trainer`` of :func:`dml_study.study.tune.cli.main` for frozen plans."""
    assert plan.tier == "frozen", "the stand-in trains frozen arms only"
    return _make_standin_class()(config)


# --------------------------------------------------------------------------- study files


def tiny_tuning_study(root: Path, *, trials: int = 4, epochs: int = 4, batch: int = 1,
                      pruner: str = "none", folds: Sequence[int] = (0,),
                      extra_arms: Sequence[dict[str, Any]] = ()) -> Path:
    """``root/studies/tiny.yaml``: two frozen arms (no SO / SO) on icons, ``trials`` each."""
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True},
             "proxy_lr_mult": {"low": 1.0, "high": 100.0, "log": True},
             "head_lr_mult": {"low": 1.0, "high": 10.0, "log": True}}
    study = {
        "name": "tiny",
        "datasets": ["icons"],
        "train": {"dataset": "icons", "loss": "proxy_anchor", "device": "cpu",
                  "overrides": {"eval.nmi": False, "eval.ks": [1, 2]}},
        "frozen": {"views": 2, "train": {"epochs": epochs, "embedding_dim": 8, "batch_size": 16,
                             "m_per_class": 2}},
        "groups": [{"name": "frozen_so", "tier": "frozen", "datasets": ["icons"],
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
    path = root / "studies" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path
