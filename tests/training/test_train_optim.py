"""Parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dml_study.config import OptimConfig, ScheduleConfig
from dml_study.training.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    group_lrs,
    lr_factor,
)


def _groups(cfg: OptimConfig):
    backbone, head = nn.Linear(4, 4), nn.Linear(4, 2)
    proxies = nn.Parameter(torch.randn(3, 2))
    loss_groups = [{"name": "proxies", "params": [proxies]}]
    # A parameter listed twice (e.g. shared) ends up in one group only.
    groups = build_param_groups(
        backbone.parameters(), [*head.parameters(), backbone.weight], loss_groups, cfg
    )
    return groups, backbone, head, proxies


def test_param_groups_have_their_own_learning_rates():
    cfg = OptimConfig(lr=1e-4, head_lr_mult=10.0, proxy_lr_mult=100.0)
    groups, backbone, head, proxies = _groups(cfg)
    assert [g["name"] for g in groups] == ["backbone", "head", "proxies"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert groups[0]["params"] == [backbone.weight, backbone.bias]
    assert groups[1]["params"] == [head.weight, head.bias]
    assert groups[2]["params"] == [proxies]
    opt = build_optimizer(groups, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert group_lrs(opt) == pytest.approx(
        {"lr_backbone": 1e-4, "lr_head": 1e-3, "lr_proxies": 1e-2}
    )
    assert all(g["weight_decay"] == cfg.weight_decay for g in opt.param_groups)


def test_cosine_with_warmup():
    f = lr_factor(ScheduleConfig(epochs=10, name="cosine", warmup_epochs=1), steps_per_epoch=4)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    total, warm = 40, 4
    for step in (10, 22, 39):
        expected = 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert f(step) == pytest.approx(expected)
    g = lr_factor(ScheduleConfig(epochs=10, name="cosine", min_lr_ratio=0.1), 4)
    assert g(40) == pytest.approx(0.1) and g(0) == pytest.approx(1.0)


def test_step_schedule_like_proxy_anchor_steplr():
    f = lr_factor(ScheduleConfig(epochs=30, name="step", step_epochs=10, gamma=0.5), 5)
    assert f(0) == f(49) == 1.0
    assert f(50) == f(99) == 0.5
    assert f(100) == 0.25


def test_constant_schedule():
    f = lr_factor(ScheduleConfig(epochs=3, name="constant", warmup_epochs=0), 5)
    assert {f(s) for s in range(15)} == {1.0}


def test_scheduler_scales_every_group_per_step_and_restores_from_state():
    cfg = OptimConfig(lr=1.0, proxy_lr_mult=100.0)
    groups, *_ = _groups(cfg)
    opt = build_optimizer(groups, cfg)
    sched = build_scheduler(opt, ScheduleConfig(epochs=2, name="step", step_epochs=1, gamma=0.1), 3)
    for _ in range(3):
        opt.step()
        sched.step()
    assert group_lrs(opt) == pytest.approx({"lr_backbone": 0.1, "lr_head": 0.1, "lr_proxies": 10})
    state = sched.state_dict()
    groups2, *_ = _groups(cfg)
    opt2 = build_optimizer(groups2, cfg)
    sched2 = build_scheduler(
        opt2, ScheduleConfig(epochs=2, name="step", step_epochs=1, gamma=0.1), 3
    )
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert group_lrs(opt2) == pytest.approx(group_lrs(opt))
