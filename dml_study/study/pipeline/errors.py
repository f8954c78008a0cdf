"""One-line errors of ``python -m dml_study.study``: the cause, the file, the fix, an exit code.

:func:`translate` turns what a study run raises into a
:class:`~dml_study.errors.UserFacingError` that :func:`dml_study.errors.run_cli` prints as one
``error: ...`` line (``--debug`` or ``DML_STUDY_DEBUG=1``: the traceback too). A fault can
reach the command line three ways, and each is recognised:

- raised in the study process itself (the frozen tier trains in-process, the runner writes
  the report): the exception's chain;
- inside a fine-tuned run's ``02_train`` (a worker process): the grid's
  :class:`~dml_study.study.launch.launcher.GridFailedError`, whose runs carry the error's
  name and message;
- inside a report notebook: :class:`~dml_study.study.tiers.notebooks.NotebookExecutionError`
  (``ename``/``evalue`` of the failing cell).

====  ==========================================================================
code  fault (exit codes of :mod:`dml_study.errors`)
====  ==========================================================================
1     a grid run or a notebook failed for another reason (named: run and log, or
      notebook, cell and executed copy)
2     the study file: missing, not valid YAML, an unknown key or value (did-you-mean),
      an unknown ``--only`` notebook
3     a dataset is missing or cannot be built; an image cannot be decoded
4     disk full (``ENOSPC``/``EDQUOT``): free space and re-run; finished runs
      are reused, the previous report stays until the new one is complete
6     busy: a run is trained by another live process, or the study's report is
      being written by another ``study`` process
====  ==========================================================================
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dml_study.errors import (
    EXIT_BUSY,
    EXIT_DATA,
    EXIT_DISK_FULL,
    EXIT_FAILED,
    EXIT_USAGE,
    UserFacingError,
    one_line,
)


class StudyUsageError(UserFacingError, ValueError):
    """The study file, a notebook it lists or a command-line option is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class StudyDataError(UserFacingError):
    """A dataset of the study is missing or cannot be built, or an image is corrupt (exit 3)."""

    exit_code = EXIT_DATA


class StudyDiskFullError(UserFacingError):
    """No space left while the study wrote a file (exit 4)."""

    exit_code = EXIT_DISK_FULL


class StudyBusyError(UserFacingError):
    """A run, or the study's report, is held by another live process (exit 6)."""

    exit_code = EXIT_BUSY


class StudyFailedError(UserFacingError):
    """A grid run or a report notebook failed (exit 1)."""

    exit_code = EXIT_FAILED


#: What a re-run does, said at the end of most lines.
RERUN = "finished runs are reused and the previous report stays until the new one is complete"

_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]",
                   "[Errno 122]")
_LAYOUT_NAMES = ("DatasetLayoutError", "EmbeddedBuildError", "IconBuildError")
_CORRUPT = re.compile(r"cannot decode image (?P<path>.+?): (?P<reason>.+?)\. Re-download")
_LOCKED = re.compile(r"run directory (?P<path>\S+) is being trained by (?P<holder>.+?); wait")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)


def _first(exc: BaseException, names: Sequence[str]) -> BaseException | None:
    """The first exception in ``exc``'s chain whose class (or a base class) is named so."""
    for e in _chain(exc):
        if any(cls.__name__ in names for cls in type(e).__mro__):
            return e
    return None


def _free(path: str | Path | None) -> str:
    """``" (12.3 MB free there)"`` for the file system of ``path``'s nearest existing parent."""
    if path is None:
        return ""
    current = Path(path)
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return f" ({shutil.disk_usage(current).free / 1e6:.1f} MB free there)"
    except OSError:
        return ""


def disk_full(where: str, path: str | Path | None) -> StudyDiskFullError:
    """The one line of a full disk while writing ``where`` (a file or a description)."""
    return StudyDiskFullError(
        f"disk full writing {where}{_free(path)}: free space (or point --results-dir at a "
        f"disk with room) and re-run the same command; {RERUN}"
    )


def missing_dataset(text: str, config: Any | None) -> StudyDataError:
    """The one line of a missing (or unbuildable) dataset."""
    reason = one_line(text.split("Expected layout", 1)[0].split("Layout:", 1)[0]).rstrip(". ")
    source = f" ({config.source})" if config is not None and config.source else ""
    datasets = ", ".join(getattr(config, "datasets", ()) or ()) or "NAME"
    return StudyDataError(
        f"dataset not found: {reason}; get it with `python -m dml_study.data download "
        f"NAME --root DIR` (study datasets: {datasets}) and set data_root in the study "
        f"file{source} to DIR"
    )


def corrupt_image(text: str) -> StudyDataError:
    """The one line of an image that cannot be decoded."""
    matches = list(_CORRUPT.finditer(text))
    if matches:
        what = f"corrupt image {matches[-1]['path']}: {one_line(matches[-1]['reason'])}"
    else:
        what = f"corrupt image: {one_line(text)[:300]}"
    return StudyDataError(
        f"{what}; replace or delete the file (`python -m dml_study.data verify NAME --root "
        f"DIR` lists every unreadable image of a dataset), then re-run; {RERUN}"
    )


def locked_run(text: str) -> StudyBusyError:
    """The one line of a run trained by another live process."""
    match = _LOCKED.search(text)
    what = (f"run {match['path']} is being trained by {match['holder']}" if match
            else one_line(text)[:300])
    return StudyBusyError(
        f"{what}; wait for that process to finish (its finished run is then reused) or stop "
        f"it, then re-run the same command"
    )


def _from_text(text: str, config: Any | None) -> UserFacingError | None:
    """A fault recognised in an error's text (a grid run's or a notebook cell's)."""
    if any(marker in text for marker in _DISK_FULL_TEXT):
        name = re.search(r"\[Errno (?:28|122)\][^:]*: '(?P<file>[^']+)'", text)
        return disk_full(name["file"] if name else "a file of the study",
                         name["file"] if name else getattr(config, "results_dir", None))
    if "CorruptImageError" in text or _CORRUPT.search(text):
        return corrupt_image(text)
    for name in _LAYOUT_NAMES:
        if f"{name}: " in text:
            return missing_dataset(text.split(f"{name}: ", 1)[1], config)
    if "RunLockedError" in text or _LOCKED.search(text):
        return locked_run(text)
    return None


def _grid_failed(exc: Any, config: Any | None) -> UserFacingError:
    failed = list(getattr(exc, "failed", []))
    for res in failed:
        known = _from_text(f"{res.error or ''}\n{res.traceback or ''}", config)
        if known is not None:
            more = f" ({len(failed) - 1} more failed run(s) in launch.json)" if len(failed) > 1 \
                else ""
            return type(known)(f"grid run {res.run_name}: {known}{more}")
    first = failed[0] if failed else None
    if first is None:
        return StudyFailedError(one_line(exc))
    error = one_line((first.error or "").splitlines()[0] if first.error else "failed")
    where = f"; log: {first.log}" if first.log else ""
    return StudyFailedError(
        f"{len(failed)} grid run(s) failed, first {first.run_name}: {error}{where}; fix the "
        "cause and re-run the same command: only the failed runs are trained again "
        "(--list-runs shows each run's state, --debug every traceback)"
    )


def _notebook_failed(exc: Any, config: Any | None) -> UserFacingError:
    known = _from_text(f"{exc.ename}: {exc.evalue}", config)
    if known is not None:
        return type(known)(f"{exc.notebook.name}: {known}")
    where = f"cell {exc.cell_index}" if exc.cell_index is not None else "a cell"
    return StudyFailedError(
        f"{exc.notebook.name} failed in {where} ({exc.first_line!r}): {exc.ename}: "
        f"{one_line(exc.evalue)[:400]}; the executed copy with the traceback is kept at "
        f"{exc.output} and the previous report is untouched; fix the notebook and re-run "
        f"(--only {exc.notebook.name} re-executes that notebook alone)"
    )


def _yaml_error(exc: BaseException) -> StudyUsageError | None:
    """A study file that is not valid YAML: the file, the line and what the parser expected."""
    import yaml

    if not isinstance(exc, yaml.YAMLError):
        return None
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "it"
    problem = " ".join(str(p) for p in (getattr(exc, "context", None),
                                        getattr(exc, "problem", None)) if p) or one_line(exc)
    return StudyUsageError(f"study file {mark.name if mark else ''} is not valid YAML: "
                           f"{problem} ({where}); fix the file".replace("file  is", "file is"))


def translate(exc: BaseException, config: Any | None = None) -> UserFacingError | None:
    """The one-line error of an exception raised by a study run (``None``: a bug, whose
    traceback :func:`~dml_study.errors.run_cli` shows). ``config``: the study, when loaded."""
    from dml_study.study.launch.launcher import GridFailedError
    from dml_study.study.plan.config import StudyConfigError
    from dml_study.study.tiers.notebooks import NotebookExecutionError

    if isinstance(exc, UserFacingError):
        return exc
    if isinstance(exc, StudyConfigError):
        return StudyUsageError(f"{one_line(exc)} (the study file's keys: studies/embedded.yaml "
                               "documents every one)")
    yaml_error = _yaml_error(exc)
    if yaml_error is not None:
        return yaml_error
    if isinstance(exc, GridFailedError):
        return _grid_failed(exc, config)
    if isinstance(exc, NotebookExecutionError):
        return _notebook_failed(exc, config)
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return disk_full(e.filename or "a file of the study",
                             e.filename or getattr(config, "results_dir", None))
    corrupt = _first(exc, ("CorruptImageError",))
    if corrupt is not None:
        return corrupt_image(str(corrupt))
    layout = _first(exc, _LAYOUT_NAMES)
    if layout is not None:
        return missing_dataset(str(layout), config)
    locked = _first(exc, ("RunLockedError",))
    if locked is not None:
        return locked_run(str(locked))
    return _from_text(str(exc), config) if any(t in str(exc) for t in _DISK_FULL_TEXT) else None
