"""Shared fixtures for the data tests: tiny datasets in the official layouts."""

from __future__ import annotations

from pathlib import Path

import fixture_datasets as fixtures
import pytest


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root holding all four benchmarks (8 classes x 6 images each)."""
    root = tmp_path_factory.mktemp("dml_data")
    fixtures.write_cub_fixture(root)
    fixtures.write_cars_fixture(root)
    fixtures.write_sop_fixture(root)
    fixtures.write_inshop_fixture(root)
    return root
