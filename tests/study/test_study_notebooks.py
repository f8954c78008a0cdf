"""Notebook hygiene and papermill execution errors that name notebook and cell."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from study_helpers import write_notebook

from dml_study.study.report.nbtidy import tidy
from dml_study.study.report.pages import render_html
from dml_study.study.tiers.notebooks import (
    NotebookExecutionError,
    check_parameters,
    execute_notebook,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def check_notebook(path: str | Path) -> list[str]:
    """Problems with the committed form of a notebook (empty list: fine); test-side only.

    Checked: valid nbformat 4, a cell tagged ``parameters``, no outputs or execution
    counts, the generic ``python3`` kernel spec (so it opens in any JupyterLab), and the
    exact form JupyterLab saves (:mod:`dml_study.study.report.nbtidy`), so that opening the
    notebook does not mark it modified.
    """
    path = Path(path)
    problems: list[str] = []
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    if notebook.nbformat != 4:
        problems.append(f"nbformat {notebook.nbformat}, expected 4")
    try:
        nbformat.validate(notebook)
    except nbformat.ValidationError as exc:
        problems.append(f"invalid notebook: {exc.message}")
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in notebook.cells):
        problems.append("no cell tagged 'parameters'")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
            problems.append(f"cell {index} has outputs or an execution count")
    kernelspec = notebook.metadata.get("kernelspec", {})
    if kernelspec.get("name") != "python3" or kernelspec.get("language") != "python":
        problems.append(f"kernelspec {kernelspec!r}, expected name python3, language python")
    if tidy(path, check=True):
        problems.append("not in the form JupyterLab saves (opening it would mark it modified); "
                        f"run: python -m dml_study.study.report.nbtidy {path}")
    return problems


def test_the_study_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_data.ipynb", "03_ablations.ipynb", "04_proxy_analysis.ipynb",
            "05_results.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_clean_nbformat4_with_generic_kernel(path: Path):
    assert check_notebook(path) == []


def test_check_notebook_reports_outputs_and_kernel(tmp_path: Path):
    path = write_notebook(tmp_path / "dirty.ipynb", "x = 1", "print(x)")
    book = nbformat.read(path, as_version=4)
    book.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    book.cells[1].execution_count = 1
    book.metadata["kernelspec"] = {"name": "myenv", "display_name": "x", "language": "python"}
    nbformat.write(book, path)
    problems = check_notebook(path)
    assert any("cell 1 has outputs" in p for p in problems)
    assert any("kernelspec" in p for p in problems)


def test_failing_cell_is_reported_with_notebook_cell_and_kept_output(tmp_path: Path):
    source = write_notebook(
        tmp_path / "broken.ipynb",
        "divisor = 1",
        "ok = 10 / divisor",
        "# a comment first\nresult = ok / (divisor - divisor)\nprint(result)",
    )
    output = tmp_path / "out" / "broken.ipynb"
    with pytest.raises(NotebookExecutionError) as info:
        execute_notebook(source, output, {"divisor": 2})
    error = info.value
    # Cell 2 of the source notebook (papermill's injected parameters cell is not counted).
    assert error.cell_index == 2
    assert error.first_line == "# a comment first"
    assert error.ename == "ZeroDivisionError"
    message = str(error)
    assert "broken.ipynb" in message and "cell 2" in message and "ZeroDivisionError" in message
    assert str(output) in message
    executed = nbformat.read(output, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ZeroDivisionError"
    assert render_html(output).read_text().count("ZeroDivisionError") >= 1


def test_unknown_parameter_is_rejected_before_execution(tmp_path: Path):
    source = write_notebook(tmp_path / "p.ipynb", "alpha = 1\nbeta = 2", "alpha + beta")
    with pytest.raises(ValueError, match=r"'gamma'.*alpha, beta"):
        check_parameters(source, {"alpha": 3, "gamma": 1})
    with pytest.raises(ValueError, match="gamma"):
        execute_notebook(source, tmp_path / "o.ipynb", {"gamma": 1})
    assert not (tmp_path / "o.ipynb").exists()


def test_local_kernel_talks_over_ipc_without_the_plaintext_tcp_warning(tmp_path: Path, capfd):
    path = write_notebook(tmp_path / "tiny.ipynb", "x = 1", "print(x + 1)")
    out = execute_notebook(path, tmp_path / "out.ipynb", {"x": 2})
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"] == "3\n"
    assert "without encryption" not in capfd.readouterr().err


def test_nbtidy_writes_the_form_jupyterlab_saves_and_is_idempotent(tmp_path: Path):
    from dml_study.study.report.nbtidy import kernel_metadata, main, tidy

    # What a hand-written notebook looks like: no cell ids, the short kernel display name,
    # language_info without the fields the kernel reports.
    path = write_notebook(tmp_path / "hand.ipynb", "x = 1", "print(x)")
    book = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    book.nbformat_minor = 4
    for cell in book.cells:
        cell.pop("id", None)
    book.metadata["language_info"] = {"name": "python"}
    path.write_text(nbformat.writes(book, version=nbformat.NO_CONVERT), encoding="utf-8")
    assert any("JupyterLab" in p for p in check_notebook(path))
    assert main(["--check", str(path)]) == 1
    assert tidy(path) is True
    assert tidy(path) is False and main(["--check", str(path)]) == 0
    assert check_notebook(path) == []
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.startswith('{\n "cells": [\n  {\n')
    saved = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    assert saved.nbformat_minor >= 5 and [c.id for c in saved.cells] == ["cell-000", "cell-001"]
    expected = kernel_metadata()
    assert saved.metadata.kernelspec == expected["kernelspec"]
    assert saved.metadata.language_info == expected["language_info"]
    assert saved.metadata.language_info["version"].count(".") == 2
    # Exactly what jupyter-server writes when JupyterLab saves the notebook.
    again = tmp_path / "saved_by_server.ipynb"
    nbformat.write(saved, again, version=nbformat.NO_CONVERT)
    assert again.read_text(encoding="utf-8") == text
    # A version recorded on another machine is kept (no churn between machines).
    saved.metadata.language_info["version"] = "3.99.0"
    path.write_text(nbformat.writes(saved, version=nbformat.NO_CONVERT) + "\n", encoding="utf-8")
    assert tidy(path) is False


def test_executed_notebook_holds_no_machine_path_and_no_tqdm_warning(tmp_path: Path):
    from dml_study.study.tiers.machine_paths import find_machine_paths

    results = tmp_path / "results"
    path = write_notebook(
        tmp_path / "nb.ipynb", "results_dir = 'x'",
        "from pathlib import Path\nfrom tqdm.auto import tqdm\n"
        "print(results_dir, Path(results_dir).resolve())",
    )
    out = execute_notebook(path, tmp_path / "out" / "nb.ipynb", {"results_dir": str(results)},
                           cwd=tmp_path)
    text = out.read_text(encoding="utf-8")
    assert find_machine_paths(text) == [] and str(tmp_path) not in text
    assert "TqdmWarning" not in text and "stderr" not in text
    executed = nbformat.read(out, as_version=4)
    assert "results_dir = \"results\"" in executed.cells[1].source  # injected, relative
    assert executed.cells[-1].outputs[0]["text"] == "results results\n"


def test_two_executions_of_the_same_inputs_are_byte_identical(tmp_path: Path):
    """papermill gives its injected-parameters cell a random id; the executed notebooks of
    the same inputs must not differ in it (a regeneration compares them byte for byte)."""
    source = write_notebook(tmp_path / "nb.ipynb", "x = 1", "y = x + 1")
    output = tmp_path / "out" / "nb.ipynb"
    first = execute_notebook(source, output, {"x": 2}).read_text()
    second = execute_notebook(source, output, {"x": 2}).read_text()
    mask = re.compile(r'"\d{4}-\d\d-\d\dT[0-9:.]+(Z|\+00:00)"|"duration": [0-9.e-]+')
    assert mask.sub("", first) == mask.sub("", second)
    injected = [c for c in nbformat.reads(first, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.id for c in injected] == ["injected-parameters"]


def test_relative_links_of_the_source_still_resolve_in_the_executed_copy(tmp_path: Path):
    """02_train links ``../docs/validation.md`` (from ``notebooks/``); its executed copy and
    page live in ``results/<study>/runs/``, where that link was broken (the browser check
    found it on every committed run page). Links are rebased; URLs, anchors and links whose
    target does not exist from the source are left alone."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "validation.md").write_text("# validation\n")
    source = write_notebook(tmp_path / "notebooks" / "nb.ipynb", "x = 1", "y = x + 1")
    book = nbformat.read(source, as_version=4)
    text = ("See [docs/validation.md](../docs/validation.md), <a href=\"../docs/validation.md\">"
            "it</a>, [the web](https://example.org/a.md), [up](#top), [gone](../nope.md).")
    book.cells.insert(0, nbformat.v4.new_markdown_cell(text))
    nbformat.write(book, source)
    output = tmp_path / "results" / "tiny" / "runs" / "nb.ipynb"
    execute_notebook(source, output, {"x": 2}, cwd=tmp_path)
    markdown = nbformat.read(output, as_version=4).cells[0].source
    assert markdown == text.replace("../docs/validation.md", "../../../docs/validation.md")
    assert (output.parent / "../../../docs/validation.md").resolve().is_file()
    page = render_html(output).read_text(encoding="utf-8")
    assert 'href="../../../docs/validation.md"' in page and "../nope.md" in page
