"""Misspelt papermill parameters fail with a did-you-mean instead of running the defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from reliability_helpers import CHECKOUT, subprocess_env, write_notebook

from dml_study.notebook_params import (
    NotebookParameterError,
    add_check_cell,
    assigned_names,
    check_parameters,
    has_check_cell,
)

PARAMETERS = "dataset = None\nso_lambda = None  # SO weight\nepochs: int = 3\n"


def _history(*injected: str) -> dict[str, list[str]]:
    """A kernel namespace as papermill leaves it: parameters cell, then the injected cell."""
    cells = ["", PARAMETERS]
    if injected:
        cells.append("# Parameters\n" + "\n".join(injected) + "\n")
    return {"In": cells}


def test_assigned_names_of_a_cell():
    assert assigned_names(PARAMETERS) == ["dataset", "so_lambda", "epochs"]
    assert assigned_names("%matplotlib inline\na = b = 1\nc, d = 1, 2\nf(x=1)") == [
        "a", "b", "c", "d"]


def test_unknown_parameter_raises_with_did_you_mean():
    with pytest.raises(NotebookParameterError, match=r"'so_lamda' \(did you mean 'so_lambda'"):
        check_parameters(_history('so_lamda = 0.1', 'dataset = "icons"'))


def test_declared_parameters_and_interactive_runs_pass():
    check_parameters(_history('so_lambda = 0.1', 'epochs = 2'))
    check_parameters(_history())  # no papermill: nothing injected
    check_parameters({})  # no IPython history at all
    with pytest.raises(NotebookParameterError):
        check_parameters(_history("lr = 1"), declared=["dataset"])


def test_every_notebook_checks_its_parameters():
    notebooks = sorted((CHECKOUT / "notebooks").glob("*.ipynb"))
    assert notebooks
    missing = [p.name for p in notebooks if not has_check_cell(nbformat.read(p, as_version=4))]
    assert not missing, (
        f"{missing} lack the check cell: python -m dml_study.notebook_params add-check "
        + " ".join(f"notebooks/{m}" for m in missing)
    )


def test_add_check_cell_is_idempotent(tmp_path: Path):
    path = write_notebook(tmp_path / "n.ipynb", "a = 1", "print(a)")
    assert add_check_cell(path) is True
    assert add_check_cell(path) is False
    cells = nbformat.read(path, as_version=4).cells
    assert "check_parameters(globals())" in cells[1].source and len(cells) == 3


def test_papermill_with_a_misspelt_parameter_fails(tmp_path: Path):
    """Done-when: ``papermill notebooks/02_train.ipynb out.ipynb -p so_lamda 0.1`` fails."""
    out = subprocess.run(
        [sys.executable, "-m", "papermill", str(CHECKOUT / "notebooks" / "02_train.ipynb"),
         str(tmp_path / "out.ipynb"), "-p", "so_lamda", "0.1"],
        capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "NotebookParameterError" in out.stderr and "so_lambda" in out.stderr
    assert not list(tmp_path.rglob("metrics.json"))  # nothing was trained
