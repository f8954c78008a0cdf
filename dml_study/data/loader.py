"""DataLoader construction that works the same with 0 or N worker processes.

Worker processes and signals
----------------------------
Ctrl-C reaches the whole process group and SLURM signals every process of a job step, so
data-loader workers receive the SIGINT/SIGTERM meant for the trainer. The trainer stops
gracefully (:mod:`dml_study.training.interrupt`) but needs its workers alive to finish the
step it is in, so workers ignore both signals (:func:`ignore_interrupts`, their
``worker_init_fn``); the trainer shuts them down itself however the run ends.

That alone leaves a window: torch installs a C-level SIGTERM handler in every new worker
(it re-raises the signal with the default action, i.e. the worker dies) *before* it calls
``worker_init_fn``. A signal that lands while the workers start would kill one and end the
run with "DataLoader worker … exited unexpectedly". :class:`SignalSafeDataLoader` closes the
window: while it forks its workers the parent blocks SIGINT/SIGTERM (the children inherit
the blocked mask), each worker installs ``SIG_IGN`` and only then unblocks them (a pending
ignored signal is discarded), and the parent unblocks right after — a signal sent meanwhile
is delivered to it then, not lost.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.utils.data

#: The signals the workers leave to the main process.
INTERRUPT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


def ignore_interrupts(_worker_id: int = 0) -> None:
    """``worker_init_fn``: ignore SIGINT/SIGTERM, then unblock them (see the module doc)."""
    for sig in INTERRUPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPT_SIGNALS)


@contextmanager
def interrupts_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM in the calling thread; restore the previous mask on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class SignalSafeDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers survive a SIGINT/SIGTERM sent to the process group."""

    def _get_iterator(self) -> Any:
        # The only place torch starts worker processes (on the first ``iter`` of a
        # persistent loader, on every ``iter`` otherwise).
        if self.num_workers == 0:
            return super()._get_iterator()
        with interrupts_blocked():
            return super()._get_iterator()


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_sampler: Iterable[list[Any]] | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader for ``dataset`` either from a batch sampler or from ``batch_size``.

    Creating a DataLoader iterator draws a base seed; the loader has its own generator
    (seeded with ``seed``) so that draw does not come from the *global* torch RNG and shift
    the model's random stream every epoch and on resume. With workers, they are persistent
    (no re-spawn each epoch, so a decoded cache and imported modules survive) and leave
    SIGINT/SIGTERM to the main process (module doc). ``shuffle`` is only for the
    ``batch_size`` path; samplers carry their own seeded order. Batches from a sampler may
    hold any keys the dataset accepts (the trainer's :data:`SampleKey` tuples).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if batch_sampler is not None and (batch_size is not None or shuffle):
        raise ValueError("pass either batch_sampler or batch_size/shuffle, not both")
    if batch_sampler is None and batch_size is None:
        raise ValueError("pass a batch_sampler or a batch_size")
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "generator": torch.Generator().manual_seed(int(seed)),
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["worker_init_fn"] = ignore_interrupts
    if batch_sampler is not None:
        return SignalSafeDataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return SignalSafeDataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, **kwargs
    )
