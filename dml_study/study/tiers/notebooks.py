"""Executing notebooks: papermill with errors that say where, executed copies without machine paths.

:func:`execute_notebook` wraps :func:`papermill.execute_notebook` so that a failure raises
:class:`NotebookExecutionError` naming the notebook, the failing cell (its index in the
source notebook, its execution count and first source line) and the executed copy that
was kept with the error in it. Executed notebooks hold no absolute machine paths: path
parameters under the working directory are passed relative to it, and what the kernel
printed is relativised afterwards (:mod:`dml_study.study.tiers.machine_paths`).
Rendering an executed notebook to HTML is the report's business
(:func:`dml_study.study.report.pages.render_html`).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import nbformat

from dml_study.atomic_io import atomic_write_text
from dml_study.study.tiers.machine_paths import relative_parameters, relativised

#: Tags papermill puts on the cells it adds to an executed notebook.
_PAPERMILL_TAGS = ("injected-parameters", "papermill-error-cell-tag")


class NotebookExecutionError(RuntimeError):
    """A notebook failed; attributes say which notebook and which cell."""

    def __init__(
        self,
        notebook: Path,
        output: Path,
        cell_index: int | None,
        execution_count: int | None,
        first_line: str,
        ename: str,
        evalue: str,
    ) -> None:
        self.notebook = Path(notebook)
        self.output = Path(output)
        self.cell_index = cell_index
        self.execution_count = execution_count
        self.first_line = first_line
        self.ename = ename
        self.evalue = evalue
        where = f"cell {cell_index}" if cell_index is not None else "a cell"
        if execution_count is not None:
            where += f" (In [{execution_count}])"
        super().__init__(
            f"{self.notebook.name} failed in {where}: {first_line!r}\n"
            f"  {ename}: {evalue}\n"
            f"  executed notebook with the error kept at {self.output}"
        )


def execute_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    kernel_name: str = "python3",
    cwd: str | Path | None = None,
    cell_timeout: int | None = None,
    stdout: TextIO | None = None,
    progress_bar: bool = False,
    kernel_stderr: str | Path | None = None,
) -> Path:
    """Execute ``notebook`` with papermill into ``output``; return ``output``.

    ``parameters`` must all be parameters of the notebook (its ``parameters`` cell):
    papermill would otherwise inject them silently and the notebook would ignore them.
    ``stdout`` receives the kernel's printed output live (e.g. ``sys.stdout``).
    ``kernel_stderr``, if given, is a file that receives the kernel *process's* own stderr
    (appended): what ipykernel, zmq or a crashing library write outside any cell, at start-up
    and shut-down. Without it the kernel inherits this process's stderr. A cell's output,
    C-level writes included, reaches ``stdout`` and the executed copy either way.
    Absolute path parameters under ``cwd`` are passed relative to it, and the executed copy
    is rewritten without the machine's paths (:func:`~dml_study.study.tiers.machine_paths.
    relativised`), so ``results/`` reads the same on every machine.
    On failure the executed copy (with the traceback in the failing cell) stays at
    ``output`` and :class:`NotebookExecutionError` is raised.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    parameters = dict(parameters or {})
    check_parameters(notebook, parameters)
    workdir = Path(cwd) if cwd is not None else notebook.parent
    parameters = relative_parameters(parameters, workdir)
    output.parent.mkdir(parents=True, exist_ok=True)
    # papermill logs every cell at INFO through its own logger; keep the terminal for the
    # study's own progress lines unless the caller configured logging otherwise.
    logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(workdir),
            progress_bar=progress_bar,
            stdout_file=stdout,
            execution_timeout=cell_timeout,
            config=_local_kernel_config(kernel_stderr),
        )
    except PapermillExecutionError as exc:
        _relativise(output, workdir, notebook.parent)
        raise _execution_error(notebook, output, exc) from None
    _relativise(output, workdir, notebook.parent)
    return output


#: The id of papermill's injected-parameters cell in an executed notebook. papermill gives
#: that cell a random id, so two executions of the same inputs would differ in it (and in
#: the rendered page's ``cell-id=`` anchor); a fixed id keeps them byte-identical.
INJECTED_CELL_ID = "injected-parameters"


def _relativise(output: Path, workdir: Path, source_dir: Path | None = None) -> None:
    """The executed copy as ``results/`` keeps it, in one read and one write: the injected
    cell's fixed id (:data:`INJECTED_CELL_ID`), the source's relative links rebased
    (:func:`rebase_links`) and no machine paths (:func:`relativised`)."""
    if not output.is_file():
        return
    notebook = nbformat.read(output, as_version=nbformat.NO_CONVERT)
    before = json.dumps(notebook, sort_keys=True)
    _pin_injected_cell_id(notebook)
    if source_dir is not None:
        rebase_links(notebook, source_dir, output.parent)
    notebook = relativised(notebook, workdir)
    if json.dumps(notebook, sort_keys=True) != before:
        atomic_write_text(output, nbformat.writes(notebook) + "\n")


def _pin_injected_cell_id(notebook: Any) -> None:
    """Give the injected-parameters cell of ``notebook`` the id :data:`INJECTED_CELL_ID`."""
    for cell in notebook.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []) and "id" in cell:
            cell["id"] = INJECTED_CELL_ID


#: A relative link target in a markdown cell: ``[text](target)`` or ``href="target"``.
_LINK = re.compile(r"(\]\(|href=[\"'])([^)\"'\s#?]+)")


def rebase_links(notebook: Any, source_dir: str | Path, out_dir: str | Path) -> int:
    """Rewrite the relative links of ``notebook``'s markdown cells from ``source_dir`` (where
    the notebook was written, e.g. ``notebooks/``) to ``out_dir`` (where its executed copy
    lives), so that a link such as ``../docs/validation.md`` still resolves in the copy under
    ``results/<study>/runs/`` and in the page rendered beside it. Only links whose target
    exists from ``source_dir`` are rewritten (URLs, anchors and absolute paths never are).
    Returns how many were.
    """
    source_dir, out_dir = Path(source_dir).resolve(), Path(out_dir).resolve()
    if out_dir == source_dir:
        return 0
    count = 0

    def rebase(match: re.Match[str]) -> str:
        nonlocal count
        target = match.group(2)
        if ":" in target or target.startswith("/") or not (source_dir / target).exists():
            return match.group(0)
        count += 1
        return match.group(1) + os.path.relpath(source_dir / target, out_dir).replace(
            os.sep, "/")

    for cell in notebook.cells:
        if cell.get("cell_type") == "markdown":
            cell["source"] = _LINK.sub(rebase, cell["source"])
    return count


def _local_kernel_config(kernel_stderr: str | Path | None = None) -> Any:
    """Kernel-manager settings: IPC sockets instead of TCP on POSIX systems, and where the
    kernel process's own stderr goes (:class:`_StderrFileKernelManager`).

    The kernel always runs on this machine, so nothing needs a network port; with TCP,
    ipykernel warns on every start that code and outputs travel in plain text (one alarming
    line per training run of the study). Windows has no IPC transport and keeps TCP.
    """
    from traitlets.config import Config

    config = Config()
    if sys.platform != "win32":
        config.KernelManager.transport = "ipc"
        # IPC sockets are files "<ip>-<n>" picked by the first free n; kernels started at
        # the same moment by parallel runs (dml_study.study.launch.launcher) in one directory could
        # pick the same files, so every process gets its own directory.
        config.KernelManager.ip = str(_ipc_dir() / "kernel")
    if kernel_stderr is not None:
        config.NotebookClient.kernel_manager_class = _stderr_file_kernel_manager()
        config.StderrFileKernelManager.stderr_path = str(kernel_stderr)
    return config


@functools.cache
def _stderr_file_kernel_manager() -> type:
    """The kernel manager that starts the kernel with its stderr on a file (built on first
    use, so importing this module does not import jupyter_client).

    Why: the kernel process writes to its own stderr outside any cell, and what it writes
    there depends on races. jupyter_client interrupts every kernel it shuts down, and
    ipykernel logs ``KeyboardInterrupt caught in kernel`` or not, depending on timing. zmq
    may abort a socket torn down mid-poll (``Assertion failed: pfd.revents & POLLIN``).
    Inherited, that noise lands in a run's committed log at random, and two regenerations
    of one study would differ in it.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class StderrFileKernelManager(AsyncKernelManager):
        """An :class:`AsyncKernelManager` whose kernel's stderr is appended to ``stderr_path``."""

        stderr_path = Unicode("", config=True, help="File that receives the kernel's stderr.")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # jupyter_client documents ``_launch_kernel`` as the hook to override for
            # launching differently; ``stderr`` reaches Popen (jupyter_client.launcher).
            if not self.stderr_path:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            Path(self.stderr_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.stderr_path, "ab") as err:  # Popen dups it: closing is safe
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": err})

    return StderrFileKernelManager


@functools.cache
def _ipc_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="dml-kernels-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """Raise ``ValueError`` if a key of ``parameters`` is not a parameter of ``notebook``."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{Path(notebook).name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"its parameters cell declares: {', '.join(declared) or '(none)'}"
        )


def _execution_error(notebook: Path, output: Path, exc: Any) -> NotebookExecutionError:
    """Translate papermill's error into one that names the cell of the *source* notebook."""
    cell_index = None
    try:
        executed = nbformat.read(output, as_version=4)
        # papermill's index counts the cells of the executed notebook *before* it inserted
        # its error banner; map it back to the source notebook by skipping injected cells.
        cells = [c for c in executed.cells if "papermill-error-cell-tag" not in _tags(c)]
        before = cells[: exc.cell_index]
        injected = sum("injected-parameters" in _tags(c) for c in before)
        cell_index = exc.cell_index - injected
    except (OSError, ValueError, TypeError, IndexError):
        cell_index = exc.cell_index
    first_line = next((ln for ln in str(exc.source).splitlines() if ln.strip()), "")
    return NotebookExecutionError(
        notebook=notebook,
        output=output,
        cell_index=cell_index,
        execution_count=exc.exec_count,
        first_line=first_line.strip(),
        ename=str(exc.ename),
        evalue=str(exc.evalue),
    )


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


class Progress:
    """Plain progress lines ("[2/5] ... 12.3 s"), readable in a terminal, a log or a notebook.

    Lines rather than a redrawn bar, because this output is relayed through papermill
    from nested kernels, where carriage-return bars turn into noise.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.done = 0
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        """Print one line prefixed with the label and step."""
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{self.label} {self.done}/{self.total} | {elapsed:6.0f} s] {message}",
                  file=self.stream, flush=True)

    def step(self, message: str) -> None:
        """Count one finished item and print ``message``."""
        self.done += 1
        self.log(message)
