"""How far the batched frozen tier is from the sequential trainer on the study's own runs.

Trains a few runs of the embedded study's frozen tier (``studies/embedded.yaml``: frozen_so
no_so/so seeds 0 and 1, on icons also the dims-Gram and unnormalised SO forms, and the
frozen_margin constant and adaptive runs of seed 0) three ways: one after the other with
:func:`dml_study.study.tiers.frozen.train_frozen`, and batched with ``mode="exact"`` and
``mode="fast"``. It prints, per run and mode, the largest difference over all epochs of
R@1, MAP@R and R-Precision (percentage points), of the epoch-mean loss, and of the final
proxies and test embeddings, and the CPU seconds of each way. One thread throughout (the
exact mode is bit-identical at one thread; docs/frozen-tier.md).

    python benchmarks/frozen_tolerance.py icons                # 15 epochs, the study's
    python benchmarks/frozen_tolerance.py glyphs --epochs 3 --json glyphs.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from dml_study.config import replace
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import (
    expand_grid,
    frozen_feature_settings,
    unique_runs,
)
from dml_study.study.tiers import frozen
from dml_study.study.tiers import frozen_batched as fb
from dml_study.study.tiers.frozen import frozen_run_config
from dml_study.training.run_dir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("R@1", "MAP@R", "RP")


def cells(dataset: str) -> dict[str, list[tuple[str, str, int]]]:
    pa = [("frozen_so", v, s) for s in (0, 1) for v in ("no_so", "so")]
    if dataset == "icons":
        pa += [("frozen_form", "dims", 0), ("frozen_form", "classes_unnormalised", 0)]
    return {"proxy_anchor": pa,
            "margin": [("frozen_margin", "constant", 0), ("frozen_margin", "adaptive", 0)]}


def differences(a: Path, b: Path) -> dict[str, float]:
    ha = json.loads((a / "history.json").read_text())
    hb = json.loads((b / "history.json").read_text())
    out = {f"max_d{k}_pp": 100 * max(abs(x[k] - y[k]) for x, y in zip(ha, hb, strict=True))
           for k in METRICS}
    out["max_dloss"] = max(abs(x["loss"] - y["loss"]) for x, y in zip(ha[1:], hb[1:], strict=True))
    proxies = [np.load(run / "proxies.npy") for run in (a, b)]
    out["max_dproxies"] = float(np.abs(proxies[0] - proxies[1]).max())
    with np.load(a / "test_embeddings.npz") as ea, np.load(b / "test_embeddings.npz") as eb:
        out["max_dtest_embeddings"] = float(np.abs(ea["embeddings"] - eb["embeddings"]).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["icons", "glyphs"])
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "embedded.yaml")
    parser.add_argument("--epochs", type=int, help="override the study's epochs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    study = load_study_config(args.study)
    specs = {(s.group, s.variant, s.seed): s for s in unique_runs(expand_grid(study))
             if s.tier == "frozen" and s.dataset == args.dataset}
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, wanted in cells(args.dataset).items():
            chosen = [specs[c] for c in wanted]
            overrides = {"run.results_dir": tmp}
            if args.epochs:
                overrides["schedule.epochs"] = args.epochs
            configs = [replace(frozen_run_config(study, s), **overrides) for s in chosen]
            features = frozen.extract_features(configs[0],
                                               frozen_feature_settings(study, args.dataset))
            seconds: dict[str, float] = {}
            began = time.process_time()
            for i, config in enumerate(configs):
                frozen.train_frozen(config, features, RunDirectory.for_run(tmp, f"{family}-seq{i}"))
            seconds["sequential"] = time.process_time() - began
            for mode in fb.MODES:
                began = time.process_time()
                fb.train_frozen_batch(
                    configs, features,
                    [RunDirectory.for_run(tmp, f"{family}-{mode}{i}") for i in range(len(configs))],
                    mode=mode)
                seconds[mode] = time.process_time() - began
            for i, cell in enumerate(wanted):
                for mode in fb.MODES:
                    diff = differences(Path(tmp) / "runs" / f"{family}-seq{i}",
                                       Path(tmp) / "runs" / f"{family}-{mode}{i}")
                    report[f"{':'.join(map(str, cell))}/{mode}"] = diff
                    print(f"{args.dataset} {':'.join(map(str, cell))} {mode}: "
                          + ", ".join(f"{k} {v:.3g}" for k, v in diff.items()), flush=True)
            report[f"{family}/cpu_seconds"] = seconds
            print(f"{args.dataset} {family} ({len(configs)} runs) CPU seconds: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
