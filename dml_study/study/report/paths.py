"""Paths as the reader finds them: the published study directory, relative to the project.

A study is executed in a staging directory, ``results/<study>.staging/``, renamed to
``results/<study>/`` when every notebook succeeded
(:func:`~dml_study.study.pipeline.runner.run_study`). What a notebook prints while it runs
(``cfg.study_dir / "claims.json"``) and what papermill records in the executed notebook's
metadata (``output_path``) therefore name the staging directory, which no longer exists
when anyone reads the page, and, for a study whose results lie outside the project (a
smoke run with ``--results-dir /tmp/x``), an absolute path of the machine that ran it.

:func:`reader_path` names a path as the reader finds it: the staging directory as the
published one, relative to the project root (``results/embedded/claims.json``), and a
results directory outside the project as ``<results-dir>`` (``<results-dir>/paper/…``).
:func:`path_replacements` gives the same rewriting as ``(path, written as)`` pairs for
:func:`~dml_study.study.tiers.machine_paths.relativise_notebook`, which the report applies
to every executed notebook (outputs and metadata) and to the study's JSON files and logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from dml_study.study.plan.config import STAGING_SUFFIX, StudyConfig
from dml_study.study.tiers.machine_paths import relativise_text

#: How a results directory outside the project is named (the ``--results-dir`` it was given).
RESULTS_PLACEHOLDER = "<results-dir>"


def _absolute(config: StudyConfig, path: str | Path) -> Path:
    """``path`` made absolute against the project root, symlinks resolved."""
    path = Path(path)
    return Path(os.path.abspath(path if path.is_absolute() else Path(config.root) / path)
                ).resolve()


def published_study_dir(config: StudyConfig) -> Path:
    """``<results>/<study>``, whether or not the study is being staged right now."""
    return Path(config.results_dir) / config.name


def staging_study_dir(config: StudyConfig) -> Path:
    """``<results>/<study>.staging``: where a study run writes until it has succeeded."""
    return Path(config.results_dir) / f"{config.name}{STAGING_SUFFIX}"


def _inside(path: Path, folder: Path) -> Path | None:
    try:
        return path.relative_to(folder)
    except ValueError:
        return None


def reader_path(config: StudyConfig, path: str | Path) -> str:
    """``path`` as a reader of the published study finds it (see the module docstring).

    Inside the staging directory → the same file in the published directory; inside the
    project → relative to the project root (``results/embedded/claims.json``); inside a
    results directory outside the project → ``<results-dir>/…``; anything else is written
    with :func:`~dml_study.study.tiers.machine_paths.relativise_text` (home as ``~``).
    """
    target = _absolute(config, path)
    staging = _absolute(config, staging_study_dir(config))
    inside = _inside(target, staging)
    if inside is not None:
        target = _absolute(config, published_study_dir(config)) / inside
    relative = _inside(target, _absolute(config, "."))
    if relative is not None:
        return relative.as_posix() if relative.parts else "."
    results = _inside(target, _absolute(config, config.results_dir))
    if results is not None:
        return "/".join([RESULTS_PLACEHOLDER, *results.parts])
    return relativise_text(str(target), config.root)


def _forms(config: StudyConfig, path: Path) -> list[str]:
    """The spellings of ``path`` a notebook may hold: as configured, absolute, resolved,
    and (after the project root was made relative) relative to the root."""
    forms = {str(path), os.path.abspath(Path(config.root) / path), str(_absolute(config, path))}
    relative = _inside(_absolute(config, path), _absolute(config, "."))
    if relative is not None and relative.parts:
        forms.add(relative.as_posix())
    return sorted((f for f in forms if f not in ("", ".")), key=len, reverse=True)


def path_replacements(config: StudyConfig) -> list[tuple[str, str]]:
    """``(path, written as)`` pairs that turn staging and outside-the-project paths into
    :func:`reader_path`'s form (for :func:`~dml_study.study.tiers.machine_paths.relativise_text`).
    """
    published = reader_path(config, published_study_dir(config))
    pairs = [(form, published) for form in _forms(config, staging_study_dir(config))]
    results = _absolute(config, config.results_dir)
    if _inside(results, _absolute(config, ".")) is None:
        pairs += [(form, RESULTS_PLACEHOLDER) for form in _forms(config, results)]
    return pairs
