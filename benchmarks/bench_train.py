"""Benchmark: our training step vs a bare PyTorch loop, and data loading vs step consumption.

Measured in one run on the same batch (images/s, higher is better):

* ``ours``  — :meth:`dml_study.training.engine.Trainer.train_step` (TrainModule, parameter
  groups, gradient clipping, per-step schedule, NaN check, loss-term logging),
* ``bare``  — timm backbone + linear head + the same Proxy Anchor loss + AdamW, nothing else
  (same memory format),
* ``loader`` — the trainer's data loader (per-sample seeded augmentation) for 0 and N workers.

Timings alternate between the variants (ABAB...) so that load from other processes on a shared
machine affects both alike; the printed ratios are what matters (target overhead ≤ 5 %).

    python benchmarks/bench_train.py                      # icons preset (EfficientNet-Lite0, 64 px)
    python benchmarks/bench_train.py --steps 10 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import timm
import torch
from torch import nn

from dml_study.config import load_config
from dml_study.losses import create_loss
from dml_study.training.engine import Trainer


def bare_model(backbone: str, embedding_dim: int, state: dict, channels_last: bool) -> nn.Module:
    """timm backbone + linear head with the same weights as the trainer's embedder."""
    model = nn.Sequential()
    model.add_module("backbone", timm.create_model(backbone, pretrained=False, num_classes=0))
    model.add_module("head", nn.Linear(model.backbone.num_features, embedding_dim))
    model.load_state_dict(state)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def time_steps(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="icons")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loader workers to compare with 0")
    parser.add_argument("--loader-batches", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.dataset, results_dir=tmp, run_name="bench", quiet=True,
                          freeze_backbone_epochs=0)
        trainer = Trainer(cfg)
        trainer._set_phase(0)
        trainer.module.train()
        trainer.batches.set_position(0, 0)
        images, labels = next(iter(trainer.train_loader))
        batch = len(images)
        print(f"{cfg.model.backbone} @ {cfg.data.image_size}px, batch {batch}, "
              f"channels_last={trainer.channels_last}, threads={torch.get_num_threads()}")

        # Bare loop: same weights, same loss (fresh, same seed), plain AdamW.
        model = bare_model(cfg.model.backbone, trainer.embedder.embedding_dim,
                           trainer.embedder.state_dict(), trainer.channels_last)
        loss_fn = create_loss(cfg.loss.name, trainer.train_set.num_classes,
                              trainer.embedder.embedding_dim, so_lambda=cfg.loss.so_lambda,
                              seed=cfg.run.seed)
        opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=cfg.optim.lr)
        x = images.contiguous(memory_format=torch.channels_last) if trainer.channels_last \
            else images

        def bare_step() -> None:
            loss = loss_fn(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def our_step() -> None:
            trainer.train_step(images, labels)

        for fn in (bare_step, our_step):  # warm-up (allocator, oneDNN primitives)
            fn()
        ours, bare = [], []
        for _ in range(args.rounds):
            bare += time_steps(bare_step, args.steps)
            ours += time_steps(our_step, args.steps)
        ours_ips = batch / statistics.median(ours)
        bare_ips = batch / statistics.median(bare)
        overhead = 100 * (1 - ours_ips / bare_ips)
        print(f"training step  ours {ours_ips:8.1f} img/s   bare {bare_ips:8.1f} img/s   "
              f"ours/bare = {ours_ips / bare_ips:.3f} (overhead {overhead:+.1f} %)")

        # Data loading: how fast the loader produces batches vs what the step consumes.
        from dml_study.data import build_dataloader
        from dml_study.training.pipeline import SeededAugmentation

        for workers in (0, args.workers):
            loader = build_dataloader(SeededAugmentation(trainer.train_set, trainer.train_tf),
                                      batch_sampler=trainer.batches, num_workers=workers)
            trainer.batches.set_position(0, 0)
            it = iter(loader)
            next(it)  # worker start-up is not throughput
            start = time.perf_counter()
            n = 0
            for _ in range(args.loader_batches):
                imgs, _ = next(it)
                n += len(imgs)
            ips = n / (time.perf_counter() - start)
            print(f"data loader    {workers} workers {ips:8.1f} img/s   "
                  f"loader/step = {ips / ours_ips:.2f} (>1: the step is the bottleneck)")
            del it, loader


if __name__ == "__main__":
    main()
