"""One-line errors at every command line: the cause, the file and the fix, then an exit code.

Every command (``python -m dml_study.train``, ``.study``, ``.data``, ``.export``, ...) runs its
``main`` through :func:`run_cli`. A fault a user can meet and fix (a missing dataset, a
corrupt image, a full disk, a damaged checkpoint, a locked run, a tuning journal that was
started for another search, a bad option value) is raised as a :class:`UserFacingError`
subclass, whose message names what happened, which file, and what to do; :func:`run_cli`
prints it as one line (``error: ...``) and exits with the class's documented code.
``--debug`` on the command line, or ``DML_STUDY_DEBUG=1`` in the environment, shows the
traceback as well.

Exit codes (the same for every command):

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     a run, grid or notebook failed (its own message says which)
2     bad usage or configuration (option, study file, config value)
3     data: a dataset is missing or an image cannot be decoded
4     disk full (``ENOSPC``): free space and re-run; runs resume
5     a damaged file that cannot be recovered (checkpoint, journal, archive)
6     busy: a run, a study's report or a download is held by another live process
7     not writable: permission denied or a read-only file system
130   interrupted by SIGINT (143: SIGTERM) after checkpointing
====  =====================================================================

:func:`translate` turns the library exceptions behind these faults into the classes below,
for every command to share: an ``OSError`` with ``ENOSPC``/``EDQUOT`` anywhere in its chain
(also torch's ``RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos ...``,
which ``torch.save`` raises with the real ``OSError`` as its context), a ``PermissionError``
or ``EROFS``, a corrupt image, a missing dataset (``dml_study.data``'s
``DatasetLayoutError``) and an embedded dataset that cannot be built. The data classes are
recognised through ``sys.modules`` only: this module imports nothing of ``dml_study``, so
every other module (:mod:`dml_study.atomic_io` first) may import it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

#: Environment variable that makes :func:`run_cli` print tracebacks (like ``--debug``).
DEBUG_ENV = "DML_STUDY_DEBUG"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_DISK_FULL = 4
EXIT_DAMAGED = 5
EXIT_BUSY = 6
EXIT_NOT_WRITABLE = 7

#: ``errno`` values that mean "no room left": a full file system or an exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserFacingError(Exception):
    """A fault the user can fix; its message is one line naming cause, file and fix."""

    exit_code: int = EXIT_FAILED


class UsageError(UserFacingError):
    """A bad option value, config value or study file (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(UserFacingError):
    """A dataset is missing, cannot be built, or holds a file that cannot be decoded (exit 3)."""

    exit_code = EXIT_DATA


class DatasetMissingError(DataError):
    """The dataset is not where the config (``data.data_root``) says."""


class CorruptImageFileError(DataError):
    """An image of the dataset cannot be decoded (``on_corrupt='raise'``)."""


class DamagedFileError(UserFacingError):
    """A file needed to continue is damaged and no good copy is left (exit 5)."""

    exit_code = EXIT_DAMAGED


class BusyError(UserFacingError):
    """Another live process holds the run, the study's report or a download (exit 6).

    Not a tuning journal: ``tune`` processes that share one journal are parallel workers of
    its search (:mod:`dml_study.study.tune.storage`), and a journal started for another
    search (its ``space.json`` differs) is a usage error, exit 2.
    """

    exit_code = EXIT_BUSY


class NotWritableError(UserFacingError):
    """A path cannot be written: permission denied or a read-only file system (exit 7)."""

    exit_code = EXIT_NOT_WRITABLE


def format_bytes(n: int | float | None) -> str:
    """``"5.8 MB"``, ``"950 kB"``, ``"1.2 GB"`` (decimal units, as ``df -H`` prints them)."""
    if n is None:
        return "? MB"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def mount_point(path: str | Path) -> tuple[Path, str | None]:
    """The mount point holding ``path`` (or its nearest existing ancestor), and its fs type."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    fstype = None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[1].replace("\\040", " ") == str(current):
                    fstype = fields[2]  # the last entry wins: it is the one mounted on top
    except OSError:
        pass
    return current, fstype


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for an unprivileged writer on the file system of ``path`` (None: unknown)."""
    try:
        return shutil.disk_usage(mount_point(path)[0]).free
    except OSError:
        return None


class DiskFullError(UserFacingError, OSError):
    """``ENOSPC`` (or a full quota) while writing ``path``: what is needed, what is free, and
    how a re-run continues.

    Also an :class:`OSError` with ``errno == ENOSPC``, so code that handled the raw error
    still does. ``needed`` is the size of what was being written (measured by writing it
    again into a byte counter, see :func:`dml_study.atomic_io.atomic_write_with`), or an
    estimate; ``free`` is :func:`shutil.disk_usage` on the mount after the partial file was
    removed. ``resume`` is filled in by whoever knows how a re-run continues (the trainer:
    ``"it resumes from step 12"``).
    """

    exit_code = EXIT_DISK_FULL

    def __init__(
        self,
        path: str | Path | None,
        needed: int | None = None,
        free: int | None = None,
        mount: str | Path | None = None,
        resume: str | None = None,
        note: str = "",
    ):
        OSError.__init__(self, errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.path = None if path is None else Path(path)
        self.needed, self.free, self.resume, self.note = needed, free, resume, note
        self.mount: str | None = None if mount is None else str(mount)
        if self.path is not None and (mount is None or free is None):
            point, fstype = mount_point(self.path)
            if self.mount is None:
                self.mount = f"{point} ({fstype})" if fstype else str(point)
            if self.free is None:
                self.free = free_bytes(self.path)
        self.filename = None if self.path is None else str(self.path)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        path: str | Path | None = None,
        needed: int | None = None,
        note: str = "",
    ) -> DiskFullError:
        """The error for ``exc`` (a disk-full fault, see :func:`is_disk_full`)."""
        if isinstance(exc, DiskFullError):
            return exc
        if path is None:
            path = next((e.filename for e in _chain(exc)
                         if isinstance(e, OSError) and e.filename), None)
        return cls(path, needed=needed, note=note)

    def __str__(self) -> str:
        where = f"writing {self.path}" if self.path is not None else "while writing"
        need = f"needs ~{format_bytes(self.needed)}" if self.needed else "needs more space"
        free = f"{format_bytes(self.free)} free on {self.mount or 'its file system'}"
        rerun = "free space and re-run the same command"
        if self.resume:
            rerun += f": {self.resume}"
        note = f" ({self.note})" if self.note else ""
        return f"disk full {where}: {need}, {free}; {rerun}{note}"

    def __reduce__(self):  # picklable across processes despite OSError's own args
        return (type(self), (self.path, self.needed, self.free, self.mount, self.resume,
                             self.note))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts, depth first (each exception once)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)


#: torch's zip writer, when a write of ``torch.save`` came up short (the real ``OSError`` is
#: its ``__context__`` when it wrote to a Python file object, as atomic writes do).
_TORCH_SHORT_WRITE = re.compile(r"inline_container\.cc.*unexpected pos", re.DOTALL)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause/context chain) is a full disk or quota."""
    for e in _chain(exc):
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(e) for text in _DISK_FULL_TEXT):
            return True
    return False


def is_torch_short_write(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's ``enforce fail ... unexpected pos`` (a write came up short)."""
    return any(isinstance(e, RuntimeError) and _TORCH_SHORT_WRITE.search(str(e))
               for e in _chain(exc))


def _module_class(module: str, name: str) -> type | None:
    """``module.name`` if that module is already imported (this module imports none)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def _instance_in_chain(exc: BaseException, cls: type | None) -> BaseException | None:
    if cls is None:
        return None
    return next((e for e in _chain(exc) if isinstance(e, cls)), None)


_CORRUPT_IMAGE = re.compile(r"cannot decode image (?P<path>.+?): (?P<reason>.+?)\. Re-download")


def corrupt_image_error(exc: BaseException, hint: str = "--on_corrupt skip") -> DataError:
    """One line for a ``CorruptImageError``: the file, why, and the two fixes.

    The file and reason are read from the message, which survives a re-raise from a
    DataLoader worker; there the message also carries the worker's traceback, whose source
    lines may quote the message's f-string, so the last match (the message itself) is used.
    """
    matches = list(_CORRUPT_IMAGE.finditer(str(exc)))
    match = matches[-1] if matches else None
    if match:
        path = match["path"]
        reason = one_line(match["reason"]).replace(f" '{path}'", "").replace(f" {path}", "")
        what = f"corrupt image {path}: {reason}"
    else:
        what = one_line(str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)
    return CorruptImageFileError(
        f"{what}; replace or delete the file, or re-run with {hint} to drop unreadable images "
        "with a warning (add --check_images true to screen every image before training)"
    )


def missing_dataset_error(
    exc: BaseException, dataset: str | None = None, data_root: str | Path | None = None
) -> DataError:
    """One line for a ``DatasetLayoutError``: what is missing and how to get the data."""
    text = str(exc)
    for marker in ("Expected layout", "Layout:"):
        text = text.split(marker, 1)[0]
    name = dataset or "NAME"
    root = str(data_root) if data_root is not None else "DIR"
    return DatasetMissingError(
        f"dataset {name} not found: {one_line(text).rstrip('. ')}; get it with "
        f"`python -m dml_study.data download {name} --root {root}`, or point --data_root at "
        "the folder that holds it"
    )


def not_writable_error(exc: OSError) -> NotWritableError:
    """One line for ``EACCES``/``EPERM``/``EROFS`` on a named file."""
    path = Path(exc.filename)
    cause = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
    return NotWritableError(
        f"{cause}: {path}; make {path.parent} writable (ls -ld {path.parent}) or point the "
        "command at a directory you can write (--results_dir DIR)"
    )


def translate(
    exc: BaseException,
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    on_corrupt_hint: str = "--on_corrupt skip",
) -> UserFacingError | None:
    """The :class:`UserFacingError` for a common library exception, or ``None``.

    Shared by every command (pass it to :func:`run_cli`); ``dataset``/``data_root`` name the
    data in the missing-dataset line when the caller knows them, ``on_corrupt_hint`` is how
    that command's user asks to skip corrupt images (papermill: ``-p on_corrupt skip``).

    =====================================================  =========================
    exception                                              becomes
    =====================================================  =========================
    :class:`UserFacingError`                               itself
    ``ENOSPC``/``EDQUOT`` in the chain (torch's enforce    :class:`DiskFullError`
    fail included)
    ``dml_study.data``'s ``CorruptImageError``             :class:`CorruptImageFileError`
    ``DatasetLayoutError``                                 :class:`DatasetMissingError`
    ``EmbeddedBuildError``                                 :class:`DataError`
    ``PermissionError``/``EROFS`` naming a file            :class:`NotWritableError`
    =====================================================  =========================
    """
    # A CorruptImageError is itself a UserFacingError, but one re-raised from a DataLoader
    # worker carries the worker's traceback in its message: rewrite it first.
    corrupt = _instance_in_chain(exc, _module_class("dml_study.data.images", "CorruptImageError"))
    if corrupt is not None:
        return corrupt_image_error(corrupt, on_corrupt_hint)
    if isinstance(exc, UserFacingError):
        return exc
    if is_disk_full(exc):
        return DiskFullError.from_exception(exc)
    layout = _instance_in_chain(exc, _module_class("dml_study.data.base", "DatasetLayoutError"))
    if layout is not None:
        return missing_dataset_error(layout, dataset, data_root)
    build = _instance_in_chain(exc, _module_class("dml_study.data.base", "EmbeddedBuildError"))
    if build is not None:
        return DataError(f"embedded dataset {dataset or ''} unavailable: {one_line(build)}"
                         .replace("dataset  ", "dataset "))
    for e in _chain(exc):
        if (isinstance(e, OSError) and e.filename
                and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            return not_writable_error(e)
    if is_torch_short_write(exc):
        return UserFacingError(
            f"a write was cut short ({one_line(exc)}): the disk may be full or failing; check "
            "the free space of the results directory (df -h) and re-run the same command"
        )
    return None


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is among ``argv`` or ``$DML_STUDY_DEBUG`` is set (not ``0``)."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def one_line(message: object) -> str:
    """``message`` on one line (newlines folded), as :func:`run_cli` prints it."""
    return " ".join(str(message).split())


def run_cli(
    main: Callable[[list[str] | None], int],
    argv: Sequence[str] | None = None,
    *,
    translate: Callable[[BaseException], UserFacingError | None] | None = translate,
) -> int:
    """Run ``main(argv)``; a :class:`UserFacingError` becomes one line and its exit code.

    ``--debug`` is removed from ``argv`` before ``main`` sees it; without it, warnings of
    dml_study's own categories print as one ``warning: ...`` line (:func:`one_line_warnings`).
    ``translate`` (default: the
    shared :func:`translate`) may turn other exceptions (an ``OSError`` with ``ENOSPC``, a
    library's error) into a :class:`UserFacingError`; what it returns ``None`` for is raised
    unchanged (a real bug keeps its traceback).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    try:
        with one_line_warnings(enabled=not debug):
            return int(main(args) or 0)
    except UserFacingError as err:
        return _report(err, debug)
    except Exception as exc:
        error = translate(exc) if translate is not None else None
        if error is None:
            raise
        if debug:
            traceback.print_exception(exc)
        return _report(error, debug=False)


@contextmanager
def one_line_warnings(enabled: bool = True) -> Iterator[None]:
    """Print warnings whose category is defined in dml_study as ``warning: <one line>``.

    Python's default format adds the file, line and source line of the ``warnings.warn``
    call, which says nothing to a user (``CheckpointFallbackWarning`` names the files
    itself). Other categories keep the default format.
    """
    if not enabled:
        yield
        return
    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if getattr(category, "__module__", "").startswith("dml_study"):
            return f"warning: {one_line(message)}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = default


def _report(err: UserFacingError, debug: bool) -> int:
    if debug:
        traceback.print_exception(err)
    print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
    return int(err.exit_code)
