"""Data-loader workers and SIGINT/SIGTERM (``dml_study/data/loader.py``)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.utils.data
from torch.utils.data._utils import signal_handling

from dml_study.data import build_dataloader
from dml_study.data.loader import ignore_interrupts, interrupts_blocked


class _Range(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        return i


@pytest.fixture
def signal_before_worker_init(monkeypatch):
    """Every new worker gets SIGTERM right after torch's own worker signal handlers are set.

    That is the window a process-group signal can hit while workers start (the worker is
    forked, torch has installed its C-level SIGTERM handler, ``worker_init_fn`` has not run).
    The patch is made in the parent and inherited by the forked workers.
    """
    original = signal_handling._set_worker_signal_handlers

    def set_then_signal(*args):
        original(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(signal_handling, "_set_worker_signal_handlers", set_then_signal)


def test_a_signal_while_workers_start_kills_a_plain_loader(signal_before_worker_init):
    # The control: without blocking, ``worker_init_fn`` comes too late.
    loader = torch.utils.data.DataLoader(_Range(), batch_size=4, num_workers=2,
                                         worker_init_fn=ignore_interrupts)
    with pytest.raises(RuntimeError, match=r"DataLoader worker .* exited unexpectedly|killed by"):
        list(loader)


def test_workers_survive_a_signal_while_they_start(signal_before_worker_init):
    loader = build_dataloader(_Range(), batch_size=4, num_workers=2)
    for _epoch in range(2):  # persistent workers: the second epoch reuses them
        assert torch.cat(list(loader)).tolist() == list(range(8))


def test_a_signal_to_the_parent_while_workers_start_is_delayed_not_lost():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with interrupts_blocked():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.signal(signal.SIGTERM, previous)
