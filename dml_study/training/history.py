"""Per-epoch training history, saved as JSON (nested-free records) and CSV.

``history.json`` (a list of flat records) is what is read back (:meth:`History.load`);
``history.csv`` is the same table for people and spreadsheets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dml_study.training.run_dir import RunDirectory, atomic_write_csv, atomic_write_json


class History:
    """A list of flat per-epoch records (``{"epoch": 1, "loss": ..., "so": ..., "R@1": ...}``)."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()):
        self.records: list[dict[str, Any]] = [dict(r) for r in records]

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))

    @classmethod
    def load(cls, run_dir: RunDirectory) -> History:
        """The history :meth:`save` wrote to ``run_dir`` (empty when there is none yet)."""
        if not run_dir.history_json.is_file():
            return cls()
        return cls(run_dir.read_json(run_dir.history_json.name))

    def save(self, run_dir: RunDirectory) -> None:
        atomic_write_json(run_dir.history_json, self.records)
        atomic_write_csv(run_dir.history_csv, self.records)

    def __len__(self) -> int:
        return len(self.records)
