"""One-line errors at every command line: the cause, the file and the fix, then an exit code.

Every command (``python -m dml_study.train``, ``.study``, ``.data``, ``.export``, ...) runs its
``main`` through :func:`run_cli`. A fault a user can meet and fix (a missing dataset, a
corrupt image, a full disk, a damaged checkpoint, a locked run, a journal held by another
search, a bad option value) is raised as a :class:`UserFacingError` subclass, whose message
names what happened, which file, and what to do; :func:`run_cli` prints it as one line
(``error: ...``) and exits with the class's documented code. ``--debug`` on the command
line, or ``DML_STUDY_DEBUG=1`` in the environment, shows the traceback as well.

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
6     busy: a run or a tuning journal is held by another live process
130   interrupted by SIGINT (143: SIGTERM) after checkpointing
====  =====================================================================
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

#: Environment variable that makes :func:`run_cli` print tracebacks (like ``--debug``).
DEBUG_ENV = "DML_STUDY_DEBUG"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_DISK_FULL = 4
EXIT_DAMAGED = 5
EXIT_BUSY = 6


class UserFacingError(Exception):
    """A fault the user can fix; its message is one line naming cause, file and fix."""

    exit_code: int = EXIT_FAILED


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
    translate: Callable[[BaseException], UserFacingError | None] | None = None,
) -> int:
    """Run ``main(argv)``; a :class:`UserFacingError` becomes one line and its exit code.

    ``--debug`` is removed from ``argv`` before ``main`` sees it. ``translate`` may turn
    other exceptions (an ``OSError`` with ``ENOSPC``, a library's error) into a
    :class:`UserFacingError`; what it returns ``None`` for is raised unchanged.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    try:
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


def _report(err: UserFacingError, debug: bool) -> int:
    if debug:
        traceback.print_exception(err)
    print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
    return int(err.exit_code)
