"""Optimiser parameter groups and per-step learning-rate schedules.

AdamW with three groups, as in Proxy Anchor (proxies at 100× the backbone lr):
``backbone`` (``lr``), ``head`` (``lr × head_lr_mult``) and ``proxies`` (``lr × proxy_lr_mult``).
The schedule is a multiplicative factor per optimiser step (:class:`torch.optim.lr_scheduler.
LambdaLR`), so warm-up and decay are smooth within epochs and the scheduler state is just the
step counter — trivially checkpointed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from dml_study.config import OptimConfig, ScheduleConfig


def _unique(params: Iterable[nn.Parameter], seen: set[int]) -> list[nn.Parameter]:
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def build_param_groups(
    backbone: Iterable[nn.Parameter],
    head: Iterable[nn.Parameter],
    loss_groups: list[dict],
    cfg: OptimConfig,
) -> list[dict]:
    """Parameter groups with names and their own lr.

    ``loss_groups`` comes from ``ProxyLoss.param_groups()`` (e.g. ``[{"name": "proxies",
    "params": [...]}]``); each gets ``lr × proxy_lr_mult``. A parameter appears in one group only.
    Frozen (``requires_grad=False``) parameters are included: the backbone is frozen only for
    the warm-up epochs and AdamW skips parameters whose ``grad`` is ``None``.
    """
    seen: set[int] = set()
    groups = [
        {"name": "backbone", "params": _unique(backbone, seen), "lr": cfg.lr},
        {"name": "head", "params": _unique(head, seen), "lr": cfg.lr * cfg.head_lr_mult},
    ]
    for group in loss_groups:
        groups.append(
            {
                "name": group.get("name", "proxies"),
                "params": _unique(group["params"], seen),
                "lr": cfg.lr * cfg.proxy_lr_mult,
            }
        )
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``groups``; each group keeps its own lr (the schedule scales all of them)."""
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def lr_factor(cfg: ScheduleConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplicative lr factor as a function of the optimiser step (0-based).

    Linear warm-up over ``warmup_epochs`` (from ``1/warmup_steps`` to 1), then ``cosine``
    (to ``min_lr_ratio``), ``step`` (× ``gamma`` every ``step_epochs`` epochs, counted from the
    start like Proxy Anchor's StepLR) or ``constant``.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
        progress = (step - warmup) / max(1, total - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :class:`~torch.optim.lr_scheduler.LambdaLR` for all groups."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of each named group, e.g. ``{"lr_backbone": ..., "lr_proxies": ...}``."""
    return {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
