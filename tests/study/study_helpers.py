"""Helpers of the study tests: fake train notebook, notebooks and study files on disk.

Imported by name (``from study_helpers import write_study``); ``conftest`` is not a module
name tests can import unambiguously (every test directory has one).
"""


from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from dml_study.config import TRAIN_PARAMETERS

FAKE_TRAIN_BODY = '''
import json
from pathlib import Path

import numpy as np
import yaml

rng = np.random.default_rng(seed)
so = float(so_lambda or 0.0)
classes, dim, n_test = 6, int(embedding_dim or 8), 60
out = Path(results_dir) / "runs" / run_name
out.mkdir(parents=True, exist_ok=True)
config = {
    "data": {"dataset": dataset, "image_size": image_size or 32, "batch_size": batch_size},
    "model": {"backbone": backbone or "fake", "pretrained": bool(pretrained),
              "embedding_dim": dim},
    "loss": {"name": loss or "proxy_anchor", "so_lambda": so, "so_gram": so_gram or "classes",
             "so_normalize": True if so_normalize is None else so_normalize,
             "so_reduction": so_reduction or "sum", "proxy_init": proxy_init or "kaiming"},
    "schedule": {"epochs": epochs or 2},
    "optim": {"lr": lr or 1e-3},
    "run": {"seed": seed, "run_name": run_name},
}
(out / "config.yaml").write_text(yaml.safe_dump(config))
init = rng.normal(size=(classes, dim))
final = init + (0.0 if so == 0 else -0.5 * init.mean(axis=0))
np.save(out / "proxies_init.npy", init)
np.save(out / "proxies.npy", final)
labels = np.repeat(np.arange(classes), n_test // classes)
emb = final[labels] + 0.3 * rng.normal(size=(n_test, dim))
np.savez(out / "test_embeddings.npz", embeddings=emb, labels=labels)
history = [{"epoch": e, "loss": 1.0 / e, "so": so, "so_frobenius": 10.0 / e,
            "effective_rank": 3.0 + e, "mean_abs_cos": 0.3 / e} for e in (1, 2)]
(out / "history.json").write_text(json.dumps(history))
keys = ("epoch", "loss", "so", "so_frobenius", "effective_rank", "mean_abs_cos")
(out / "history.csv").write_text(
    ",".join(keys) + "\\n" + "\\n".join(",".join(str(h[k]) for k in keys) for h in history)
)
r1 = 0.5 + (0.1 if so > 0 else 0.0) + 0.01 * seed
metrics = {"R@1": r1, "R@2": r1 + 0.05, "MAP@R": r1 / 2, "RP": r1 / 1.5, "NMI": 0.4,
           "untrained": {"R@1": 0.2, "MAP@R": 0.1}}
(out / "metrics.json").write_text(json.dumps(metrics))
print(f"fake run {run_name} done")
'''


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    """A notebook with a ``parameters`` cell and the given code cells (python3 kernel)."""
    book = new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    first = new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    book.cells = [first, *(new_code_cell(c) for c in cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


def write_fake_train_notebook(path: Path, before: str = "") -> Path:
    """A stand-in for ``02_train.ipynb`` with the same parameters (see module docstring);
    ``before`` is code run ahead of the fake trainer (a test's own behaviour)."""
    defaults = {name: None for name in TRAIN_PARAMETERS}
    defaults.update(dataset="cub200", seed=0, run_name="run", results_dir="results",
                    quiet=True)
    parameters = "\n".join(f"{k} = {v!r}" for k, v in defaults.items())
    return write_notebook(path, parameters, before + FAKE_TRAIN_BODY)


def write_study(root: Path, **overrides: Any) -> Path:
    """``root/studies/tiny.yaml``: a two-cell grid (no SO vs SO at one seed) on a fake trainer."""
    study: dict[str, Any] = {
        "name": "tiny",
        "title": "tiny study",
        "datasets": ["cub200"],
        "notebooks_dir": "notebooks",
        "notebooks": ["03_ablations.ipynb"],
        "train_notebook": "fake_train.ipynb",
        "train": {"dataset": "cub200", "epochs": 1, "quiet": True},
        "groups": [{
            "name": "so_vs_none",
            "description": "two cells",
            "seeds": [0],
            "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}},
        }],
        "stats": {"bootstrap_resamples": 200},
    }
    study.update(overrides)
    path = root / "studies" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


#: True when contract A of issue #19 (the validation split, ``dml_study.data.splits``) is in
#: this checkout: tests that build runs with its keys (``split``, ``data.max_*_per_class``)
#: skip without it.
HAS_SPLITS = importlib.util.find_spec("dml_study.data.splits") is not None
needs_splits = pytest.mark.skipif(
    not HAS_SPLITS, reason="contract A of issue #19 (dml_study.data.splits) is not in this "
    "checkout: the study files' glyph fine-tuned group uses its data.max_*_per_class keys")


def centre(param: Any) -> Any:
    """A search-space entry's centre (geometric for log ranges; the middle choice)."""
    if param.choices is not None:
        return param.choices[len(param.choices) // 2]
    if param.log:
        value = math.sqrt(param.low * param.high)
    else:
        value = (param.low + param.high) / 2
    return round(value) if param.integer else float(value)


def write_fake_chosen(config: Any, *, budget_check: bool = False, epochs: int | None = None,
                      values: Any = None, complete: bool = True,
                      only: Any = None) -> list[Path]:
    """A ``chosen.json`` for every search of ``config`` as the tuner writes it (contract B:
    ``params`` = the arm's fixed and searched values, ``epochs``, ``train_parameters`` =
    the plan's base with the values applied); searched values are the centre of each range
    unless ``values(plan)`` returns others. ``only(plan)`` selects searches. Paths written."""
    from dml_study.study.plan.tuned import apply_values
    from dml_study.study.tune import plan_searches

    paths = []
    for plan in plan_searches(config, budget_check=budget_check):
        if only is not None and not only(plan):
            continue
        searched = {k: centre(p) for k, p in plan.space.items()}
        if values is not None:
            searched.update(values(plan) or {})
        n = epochs if epochs is not None else max(1, plan.epochs - 1)
        train = apply_values(plan.base, searched)
        train["epochs"] = n
        record = {
            "dataset": plan.dataset, "group": plan.group, "variant": plan.variant,
            "tier": plan.tier, "params": {**plan.fixed, **searched}, "epochs": n,
            "value": 0.25, "metric": plan.objective, "r_at_1": 0.5, "trial": 3,
            "n_trials": plan.budget if complete else plan.budget - 1, "budget": plan.budget,
            "complete": complete,
            "validation": {"folds": plan.validation.folds,
                           "fold_ids": list(plan.validation.fold_ids),
                           "seed": plan.validation.seed},
            "trained_epochs": plan.epochs, "train_seed": plan.train_seed,
            "train_parameters": train,
        }
        plan.directory.mkdir(parents=True, exist_ok=True)
        path = plan.directory / "chosen.json"
        path.write_text(json.dumps(record, default=str))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- a tuned study

#: The search space of the tuned study's arms (lr, proxy and head multipliers).
TUNED_SPACE = {"lr": {"low": 1e-3, "high": 1e-1, "log": True},
               "proxy_lr_mult": {"low": 1.0, "high": 100.0, "log": True},
               "head_lr_mult": {"low": 1.0, "high": 10.0, "log": True}}
TUNED_VARIANTS = {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}


def tuned_study_raw(tmp_path: Path) -> dict[str, Any]:
    """Frozen groups on icons and glyphs: g (preset + tuned), m (margins, tuned), grid (an lr
    grid around g's tuned values); g's arms budget-checked at 2x."""
    return copy.deepcopy({
        "name": "syn",
        "results_dir": str(tmp_path / "results"),
        "train": {"dataset": "icons", "loss": "proxy_anchor", "device": "cpu"},
        "frozen": {"train": {"epochs": 6, "embedding_dim": 8}},
        "groups": [
            {"name": "g", "tier": "frozen", "datasets": ["icons", "glyphs"], "seeds": [0, 1],
             "protocols": ["preset", "tuned"], "tuned_seeds": [0, 1, 2],
             "variants": TUNED_VARIANTS},
            {"name": "m", "tier": "frozen", "datasets": ["icons"], "seeds": [0],
             "protocols": ["tuned"], "base": {"loss": "adaptive_margin"},
             "variants": {"constant": {"overrides": {"loss.params": {
                 "mapping": "matched_constant", "scale": 16.0}}}}},
            {"name": "grid", "tier": "frozen", "datasets": ["icons"], "seeds": [0, 1],
             "protocols": ["tuned"], "tuned_from": "g", "lr_factors": [0.1, 1.0, 10.0],
             "variants": TUNED_VARIANTS},
        ],
        "headline": {"group": "g", "baseline": "no_so", "treatment": "so"},
        "claims": [
            {"name": "r1", "group": "g", "baseline": "no_so", "treatment": "so", "metric": "R@1"},
            {"name": "robust", "group": "grid", "kind": "robustness", "baseline": "no_so",
             "treatment": "so", "metric": "lrs_within:1:R@1", "scale": 1.0, "unit": "lrs"},
        ],
        "tuning": {
            "trials": {"frozen": 4},
            "budget_check": {"arms": ["g/no_so", "g/so"], "datasets": ["icons"]},
            "arms": [
                {"group": "g", "variant": "no_so", "space": TUNED_SPACE},
                {"group": "g", "variant": "so",
                 "space": {**TUNED_SPACE, "so_lambda": {"low": 1e-3, "high": 1.0, "log": True}}},
                {"group": "m", "variant": "constant",
                 "fixed": {"loss.params.mapping": "constant", "loss.params.m_min": 0.0},
                 "space": {**TUNED_SPACE, "loss.params.m_max": {"low": 0.0, "high": 0.5}}},
            ],
        },
    })


def load_raw_study(raw: dict) -> Any:
    """The study written to ``<results>/../studies/syn.yaml`` and loaded (root: that parent)."""
    from dml_study.study.plan.config import load_study_config

    path = Path(raw["results_dir"]).parent / "studies" / "syn.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_study_config(path)
