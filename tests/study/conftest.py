"""Fixtures for the study tests: a fake ``02_train`` and small study files.

The fake training notebook has the real notebook's parameters and writes a complete run
directory (config, metrics, history, proxies, embeddings) from numpy in well under a
second, with metrics that depend on the parameters in a known way (SO adds 0.1 to R@1,
each seed adds 0.01), so the runner, grid, tables and analysis notebooks can be tested
end to end without training a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import write_fake_train_notebook


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_project(tmp_path: Path, repo_root: Path) -> Path:
    """A project root with the repository's study notebooks and a fake ``02_train``."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("01_data.ipynb", "03_ablations.ipynb", "04_proxy_analysis.ipynb",
                 "05_results.ipynb"):
        (notebooks / name).write_bytes((repo_root / "notebooks" / name).read_bytes())
    write_fake_train_notebook(notebooks / "fake_train.ipynb")
    return tmp_path
