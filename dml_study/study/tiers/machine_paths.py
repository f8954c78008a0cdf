"""Keeping absolute machine paths out of ``results/``: relativise, and find what is left.

A study's results are committed and read on other machines, so a path like
``/home/alice/dml-study/results/runs/x`` means nothing there and leaks the machine's
layout. Notebooks are executed with project-relative parameters (see
:func:`relative_parameters`); what a kernel still prints with an absolute path (library
warnings, ``Path.resolve()`` results) is rewritten by :func:`relativise_text`:

* ``<root>/x`` → ``x`` (the project root; the kernels run with it as working directory),
* ``<python prefix>/x`` → ``<python>/x`` (the interpreter or virtual environment),
* ``<home>/x`` → ``~/x``.

:func:`find_machine_paths` lists absolute paths that remain, for the checks in
:mod:`dml_study.study.report.pagecheck`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

from dml_study.atomic_io import atomic_write_text

#: Absolute POSIX paths into the usual top-level folders of a machine, and Windows drives.
#: The look-behind skips URLs (``https://host/home/...``) and relative paths (``a/home``).
_ABSOLUTE = re.compile(
    r"(?<![\w.:/~-])(?:/(?:home|root|work|tmp|Users|usr|opt|var|mnt|srv|scratch|data|private)"
    r"/[\w.@+-]+|[A-Za-z]:\\\\?(?:Users|home)\\)"
)
#: Output mime types whose payload is binary (base64): never rewritten.
_BINARY = ("image/png", "image/jpeg", "image/gif", "application/pdf")


def _prefixes(root: Path) -> list[tuple[str, str]]:
    candidates = [
        (str(Path(root).resolve()), ""),
        (str(Path(sys.prefix).resolve()), "<python>"),
        (sys.prefix, "<python>"),
        (str(Path.home()), "~"),
    ]
    seen: set[str] = set()
    pairs = []
    for prefix, name in candidates:
        if prefix and prefix != "/" and prefix not in seen:
            seen.add(prefix)
            pairs.append((prefix.rstrip("/"), name))
    return sorted(pairs, key=lambda pair: -len(pair[0]))  # longest (most specific) first


def relativise_text(text: str, root: str | Path,
                    replacements: Sequence[tuple[str, str]] = ()) -> str:
    """``text`` with the project root, Python prefix and home folder written relatively.

    ``replacements`` (``(path, written as)`` pairs, e.g. a staging directory and the
    directory it is published as) are applied first, longest path first, wherever the path
    is not followed by more of a name.
    """
    for before, after in sorted(replacements, key=lambda pair: -len(pair[0])):
        text = re.sub(re.escape(before) + r"(?![\w.-])", lambda _m, a=after: a, text)
    for prefix, name in _prefixes(Path(root)):
        # The prefix ends a path component: not followed by more of a name (``<root>-out``,
        # ``<root>.old`` are other folders); a final full stop is punctuation.
        pattern = re.compile(re.escape(prefix) + r"(?![\w-]|\.\w)(/?)")

        def repl(match: re.Match[str], name: str = name) -> str:
            slash = match.group(1)
            if name == "":
                return "" if slash else "."
            return name + slash

        text = pattern.sub(repl, text)
    return text


def relative_parameters(parameters: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """Parameters with absolute paths under ``root`` made relative to it (others unchanged)."""
    root = Path(root).resolve()
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, str | Path) and Path(value).is_absolute():
            try:
                value = str(Path(value).resolve().relative_to(root)) or "."
            except ValueError:
                value = str(value)
        out[key] = value
    return out


def _rewrite(node: Any, root: Path, replacements: Sequence[tuple[str, str]],
             key: str | None = None) -> Any:
    if isinstance(node, str):
        return node if key in _BINARY else relativise_text(node, root, replacements)
    if isinstance(node, list):
        return [_rewrite(item, root, replacements, key) for item in node]
    if isinstance(node, dict):
        return {k: _rewrite(v, root, replacements, k) for k, v in node.items()}
    return node


def relativised(notebook: Any, root: str | Path,
                replacements: Sequence[tuple[str, str]] = ()) -> Any:
    """A copy of the notebook node with :func:`relativise_text` applied to every string
    (outputs and metadata, e.g. papermill's ``input_path``/``output_path``)."""
    return nbformat.from_dict(_rewrite(dict(notebook), Path(root), replacements))


def relativise_notebook(path: str | Path, root: str | Path,
                        replacements: Sequence[tuple[str, str]] = ()) -> bool:
    """Rewrite an executed notebook in place with :func:`relativised`; True if changed."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    cleaned = relativised(notebook, root, replacements)
    if json.dumps(cleaned, sort_keys=True) == json.dumps(notebook, sort_keys=True):
        return False
    atomic_write_text(path, nbformat.writes(cleaned) + "\n")
    return True


def find_machine_paths(text: str) -> list[str]:
    """Absolute machine paths in ``text`` (e.g. ``/home/alice/x``, ``C:\\Users\\...``)."""
    return sorted(set(_ABSOLUTE.findall(text)))
