"""Save notebooks in the form JupyterLab writes, so that opening one does not mark it modified.

When JupyterLab opens a notebook and its kernel starts, it writes the kernel's
``kernelspec`` (``display_name`` "Python 3 (ipykernel)") and full ``language_info``
(version, mimetype, codemirror mode, ...) into the notebook's metadata. A notebook committed
with ``{"display_name": "Python 3"}`` and ``{"name": "python"}`` therefore shows unsaved
changes right after opening. The canonical form written here is what JupyterLab itself
would save after opening the notebook with the ``python3`` kernel of this environment:

* nbformat 4.5 (cells have ids; missing ids are made deterministic from the cell's position),
  normalised by :func:`nbformat.validator.normalize` and valid;
* outputs and execution counts cleared (committed notebooks are run by the study);
* ``kernelspec`` and ``language_info`` exactly as the installed ``python3`` kernel reports
  them; ``language_info.version`` is the Python version already recorded, or this
  Python's when there is none (JupyterLab records the version of the kernel it runs, so a
  machine with another Python version still sees that one field change);
* serialised by :func:`nbformat.writes` (1-space indent, sorted keys, UTF-8 kept,
  trailing newline), the writer jupyter-server uses when JupyterLab saves.

Usage::

    python -m dml_study.study.report.nbtidy notebooks/*.ipynb           # rewrite in place
    python -m dml_study.study.report.nbtidy --check notebooks/*.ipynb   # exit 1 if one would change
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

from dml_study.atomic_io import atomic_write_text

KERNEL_NAME = "python3"


def kernel_metadata(kernel_name: str = KERNEL_NAME) -> dict[str, Any]:
    """``kernelspec`` and ``language_info`` as JupyterLab records them for ``kernel_name``."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    return {
        "kernelspec": {"display_name": spec.display_name, "language": spec.language,
                       "name": kernel_name},
        "language_info": dict(IPythonKernel.language_info),
    }


def canonical(notebook: nbformat.NotebookNode, clear_outputs: bool = True) -> str:
    """The text of ``notebook`` in canonical form (see the module docstring)."""
    notebook = nbformat.from_dict(notebook)
    notebook.nbformat, notebook.nbformat_minor = 4, max(5, notebook.get("nbformat_minor", 0))
    used: set[str] = set()
    for index, cell in enumerate(notebook.cells):
        if not cell.get("id") or cell["id"] in used:
            cell["id"] = f"cell-{index:03d}"
        used.add(cell["id"])
        if cell.cell_type == "code" and clear_outputs:
            cell.outputs, cell.execution_count = [], None
    recorded = notebook.metadata.get("language_info", {}).get("version")
    notebook.metadata.update(kernel_metadata())
    if recorded:
        # Keep the Python version already recorded, so tidying on another machine does not
        # churn it (JupyterLab there rewrites it anyway when the kernel differs).
        notebook.metadata.language_info["version"] = recorded
    _changes, notebook = nbformat.validator.normalize(notebook)
    notebook = nbformat.from_dict(notebook)
    nbformat.validate(notebook)
    text = nbformat.writes(notebook, version=nbformat.NO_CONVERT)
    return text if text.endswith("\n") else text + "\n"


def tidy(path: str | Path, check: bool = False, clear_outputs: bool = True) -> bool:
    """Bring the notebook at ``path`` into canonical form; True if it was (or would be) changed.

    With ``check`` the file is left alone.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    tidy_text = canonical(nbformat.reads(text, as_version=nbformat.NO_CONVERT), clear_outputs)
    changed = tidy_text != text
    if changed and not check:
        atomic_write_text(path, tidy_text)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dml_study.study.report.nbtidy",
        description="Save notebooks in the form JupyterLab writes (see module docstring).",
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook is not in canonical form")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep outputs and execution counts")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    changed = [p for p in args.notebooks
               if tidy(p, check=args.check, clear_outputs=not args.keep_outputs)]
    verb = "would change" if args.check else "tidied"
    for path in changed:
        print(f"{verb}: {path}")
    if args.check and changed:
        print("run: python -m dml_study.study.report.nbtidy " + " ".join(map(str, changed)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
