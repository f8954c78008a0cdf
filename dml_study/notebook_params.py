"""Refuse misspelt papermill parameters: ``-p so_lamda 0.1`` must not train the baseline.

``papermill nb.ipynb out.ipynb -p NAME VALUE`` injects ``NAME = VALUE`` in a cell after the
notebook's ``parameters`` cell. For a name the notebook does not declare, papermill only logs
"Passed unknown parameter" and runs the notebook with its defaults — a different experiment
than the one asked for, with exit status 0. Every study notebook therefore starts with::

    from dml_study.notebook_params import check_parameters
    check_parameters(globals())

right after its parameters cell. :func:`check_parameters` reads the kernel's input history
(``In``): the cell papermill injected (its first line is papermill's ``# Parameters``
marker) against the cells executed before it (the ``parameters`` cell), and raises
:class:`NotebookParameterError` with a did-you-mean for every injected name the notebook
does not declare. Without an injected cell (interactive use) it does nothing.

``python -m dml_study.notebook_params add-check NOTEBOOK...`` inserts that cell after the
``parameters`` cell of notebooks that lack it (idempotent; :func:`has_check_cell` tests it).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dml_study.typed_fields import close_matches

#: First line of the cell papermill injects (``papermill.translators.PythonTranslator``).
INJECTED_MARKER = "# Parameters"

#: Source of the cell that :func:`add_check_cell` inserts after the parameters cell.
CHECK_CELL_SOURCE = (
    "# Fails on a papermill -p name this notebook does not declare (with a did-you-mean).\n"
    "from dml_study.notebook_params import check_parameters\n"
    "\n"
    "check_parameters(globals())"
)


class NotebookParameterError(ValueError):
    """A papermill parameter that the notebook's ``parameters`` cell does not declare."""


def assigned_names(source: str) -> list[str]:
    """Names bound by top-level assignments of a cell (IPython ``%`` lines ignored)."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.append(sub.id)
    return names


def _is_injected(source: str) -> bool:
    lines = source.strip().splitlines()
    return bool(lines) and lines[0].strip() == INJECTED_MARKER


def unknown_parameters(
    injected: Iterable[str], declared: Iterable[str]
) -> dict[str, list[str]]:
    """``{unknown name: closest declared names}`` (empty when every name is declared)."""
    declared = list(declared)
    return {
        name: close_matches(name, declared, n=2)
        for name in injected
        if name not in declared
    }


def check_parameters(namespace: Mapping[str, Any], declared: Sequence[str] | None = None) -> None:
    """Raise :class:`NotebookParameterError` if papermill injected an undeclared parameter.

    Args:
        namespace: the notebook's ``globals()`` (its ``In`` history is read).
        declared: the notebook's parameter names; default: the names assigned by the cells
            executed before the injected cell (i.e. the ``parameters`` cell).
    """
    history = [s for s in namespace.get("In", []) if isinstance(s, str)]
    injected_at = [i for i, source in enumerate(history) if _is_injected(source)]
    if not injected_at:
        return  # not run by papermill with -p: nothing was injected
    last = injected_at[-1]
    if declared is None:
        declared = [n for source in history[:last] for n in assigned_names(source)]
    unknown = unknown_parameters(assigned_names(history[last]), declared)
    if not unknown:
        return
    parts = []
    for name, close in unknown.items():
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    raise NotebookParameterError(
        f"unknown notebook parameter(s) {', '.join(parts)}: the parameters cell declares "
        f"{', '.join(declared)}. Fix the -p name; papermill would otherwise run the notebook "
        "with its defaults, i.e. a different experiment."
    )


# --------------------------------------------------------------------------- the check cell


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def has_check_cell(notebook: Any) -> bool:
    """Whether the cell right after the ``parameters`` cell calls :func:`check_parameters`."""
    cells = notebook.cells
    for i, cell in enumerate(cells):
        if "parameters" in _tags(cell):
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            return nxt is not None and "check_parameters(globals()" in "".join(nxt.source)
    return False


def add_check_cell(path: str | Path) -> bool:
    """Insert the check cell after the parameters cell of ``path``; ``False`` if present."""
    import nbformat

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    if has_check_cell(notebook):
        return False
    index = next((i for i, c in enumerate(notebook.cells) if "parameters" in _tags(c)), None)
    if index is None:
        raise ValueError(f"{path}: no cell tagged 'parameters'")
    cell = nbformat.v4.new_code_cell(CHECK_CELL_SOURCE)
    cell["id"] = "check-parameters"
    notebook.cells.insert(index + 1, cell)
    nbformat.write(notebook, path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dml_study.notebook_params",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-check", help="insert the check cell after the parameters cell")
    add.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"{path}: {'check cell added' if add_check_cell(path) else 'already checked'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
