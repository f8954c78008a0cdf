"""SIGINT/SIGTERM during training: finish the step, checkpoint, exit with a resume hint.

Ctrl-C (SIGINT) and SIGTERM — what SLURM sends on pre-emption and time-out, and what
``kill`` sends by default — would otherwise abort the process wherever it happens to be
(a traceback from inside torch, every step since the last checkpoint lost).
:class:`GracefulInterrupt` replaces both handlers while the trainer runs: the first signal
only sets :attr:`GracefulInterrupt.signum`; the trainer polls it after every optimiser step,
writes ``checkpoints/last.pt`` and raises
:class:`~dml_study.training.errors.TrainingInterrupted` ("interrupted at step N; re-run the
same command to resume"), which the command line turns into exit status 128 + signal
(130 / 143). A *second* signal means "now": it raises :class:`KeyboardInterrupt` at once,
without a checkpoint (the previous one stays valid).

Handlers can only be installed from the main thread; elsewhere (a training call from a
worker thread) the context manager does nothing and signals keep their default meaning.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

#: The signals handled gracefully.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class GracefulInterrupt:
    """Context manager recording the first SIGINT/SIGTERM; a second one interrupts at once."""

    def __init__(self, on_first: Any = None):
        #: The first signal received (``None`` until one arrives).
        self.signum: int | None = None
        self._on_first = on_first
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """The installed handler (also callable directly, e.g. in tests)."""
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt(
                f"second {signal.Signals(signum).name}: stopped at once, without a checkpoint"
            )
        self.signum = signum
        if self._on_first is not None:
            self._on_first(signum)

    def install(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> GracefulInterrupt:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
