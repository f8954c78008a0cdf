"""Screening image files: decode each once, list every one that fails, remember the rest.

The one screening path of the package. :func:`screen_paths` decodes every file fully (as
training will, through :func:`~dml_study.data.images.load_rgb`) and returns *all* the files
that fail, each with a one-line reason, instead of stopping at the first. It is used by

- ``get_dataset(..., check_images=True)`` / ``on_corrupt="skip"`` (:func:`make_dataset`), and
  so by the trainer before its first epoch (``data.check_images``, on by default there);
- ``python -m dml_study.data verify NAME`` (:mod:`dml_study.data.verify`).

**Records.** A decode of a full benchmark takes minutes, so its outcome is remembered in
``<cache>/verified/<dataset>.json`` keyed by the file's absolute path and valid while the
file's ``(size, mtime_ns)`` are unchanged: a second screening of an unchanged dataset only
``stat``\\ s its files. A file that is replaced (a re-download, a fix) has a new mtime and is
decoded again. Bad files are recorded too (with their reason), so a second run lists them
again without decoding. The records are written atomically; two processes screening at once
may each decode a file, and the last writer's records win — never a torn file. Entries of
files that no longer exist are dropped when the records are written.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import UnidentifiedImageError
from tqdm.auto import tqdm

from dml_study.atomic_io import atomic_write_text
from dml_study.errors import EXIT_DATA
from dml_study.paths import VERIFY_RECORDS_DIR, cache_root

from .images import CorruptImageError, load_rgb

RECORDS_FORMAT = 1
#: How many bad files a one-line error names before "and N more".
SHOWN_IN_ERRORS = 10


@dataclass(frozen=True)
class BadImage:
    """A file that does not decode, and why (one line)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


@dataclass
class ScreenResult:
    """What :func:`screen_paths` found.

    Attributes:
        checked: files screened.
        decoded: files actually decoded (the others were answered by the records).
        bad: every file that does not decode, in input order.
    """

    checked: int = 0
    decoded: int = 0
    bad: list[BadImage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


class CorruptImagesError(CorruptImageError):
    """Screening found image files that do not decode; the message names them (one line)
    and the two fixes: replace the files, or drop them with ``on_corrupt='skip'``."""

    exit_code = EXIT_DATA

    def __init__(self, dataset: str, bad: Sequence[BadImage], fix: str = "") -> None:
        self.dataset = dataset
        self.bad = list(bad)
        super().__init__(corrupt_images_message(dataset, self.bad, fix))


def corrupt_images_message(dataset: str, bad: Sequence[BadImage], fix: str = "") -> str:
    """``"<dataset>: N image file(s) cannot be decoded: a (reason); b (reason) ...; fix"``."""
    shown = "; ".join(str(b) for b in bad[:SHOWN_IN_ERRORS])
    more = f"; and {len(bad) - SHOWN_IN_ERRORS} more" if len(bad) > SHOWN_IN_ERRORS else ""
    listing = f" (`python -m dml_study.data verify {dataset}` lists them all)" if more else ""
    return (
        f"{dataset}: {len(bad)} image file(s) cannot be decoded: {shown}{more}. Replace "
        f"them{listing}{fix}, or leave them out with on_corrupt='skip' (training: "
        f"--on_corrupt skip; papermill: -p on_corrupt skip; get_dataset(..., "
        f"on_corrupt='skip'))"
    )


def records_file(dataset: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache>/verified/<dataset>.json``: the screening records of ``dataset``."""
    return cache_root(cache_dir) / VERIFY_RECORDS_DIR / f"{dataset}.json"


def failure_reason(path: Path, err: BaseException) -> str:
    """A one-line reason for a file that failed to decode (empty, not an image, truncated)."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as stat_err:
        return f"unreadable: {stat_err.strerror or stat_err}"
    cause = err.__cause__ if err.__cause__ is not None else err
    if isinstance(cause, UnidentifiedImageError):
        return "not an image (no decoder recognises its contents)"
    text = " ".join(str(cause).split()) or type(cause).__name__
    if "truncated" in text.lower():
        return f"truncated: {text}"
    return f"cannot decode: {text}"


def _decode(path: Path) -> str | None:
    """``None`` when ``path`` decodes fully, else the reason it does not."""
    try:
        load_rgb(path)
    except CorruptImageError as err:
        return failure_reason(path, err)
    except FileNotFoundError:
        return "missing (listed by the dataset but not on disk)"
    except OSError as err:  # e.g. permission denied
        return f"unreadable: {err.strerror or err}"
    return None


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def load_records(records: Path) -> dict[str, list]:
    """``{absolute path: [size, mtime_ns, reason or None]}``; an unreadable file is empty."""
    try:
        data = json.loads(records.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != RECORDS_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def save_records(records: Path, fresh: dict[str, list]) -> None:
    """Merge ``fresh`` into ``records`` (fresh entries win), drop entries of files that no
    longer exist, and write the file atomically."""
    merged = {k: v for k, v in load_records(records).items() if k not in fresh}
    merged = {k: v for k, v in merged.items() if os.path.exists(k)}
    merged.update(fresh)
    text = json.dumps({"format": RECORDS_FORMAT, "files": dict(sorted(merged.items()))},
                      separators=(",", ":"))
    atomic_write_text(records, text + "\n")


def screen_paths(
    paths: Sequence[Path],
    *,
    records: Path | None = None,
    progress: bool = True,
    desc: str = "verify images",
    num_threads: int = 2,
) -> ScreenResult:
    """Decode every file of ``paths`` once and return every one that fails.

    Args:
        records: the records file (see the module docstring); ``None`` decodes everything
            and remembers nothing.
        num_threads: decoding threads (Pillow releases the GIL while decoding).
    """
    known = load_records(records) if records is not None else {}
    result = ScreenResult(checked=len(paths))
    reasons: dict[int, str] = {}
    todo: list[tuple[int, Path, tuple[str, int, int] | None]] = []
    for i, path in enumerate(paths):
        key = _stat_key(Path(path))
        entry = known.get(key[0]) if key is not None else None
        if key is not None and entry is not None and tuple(entry[:2]) == key[1:]:
            if entry[2] is not None:
                reasons[i] = str(entry[2])
        else:
            todo.append((i, Path(path), key))
    fresh: dict[str, list] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            outcomes: Iterator[str | None] = pool.map(_decode, [p for _, p, _ in todo])
            bar = tqdm(outcomes, total=len(todo), desc=desc, disable=not progress or not todo,
                       unit="img", leave=False)
            for (i, _, key), reason in zip(todo, bar, strict=False):
                result.decoded += 1
                if reason is not None:
                    reasons[i] = reason
                if key is not None:
                    fresh[key[0]] = [key[1], key[2], reason]
    finally:  # an interrupted screening keeps what it decoded
        if records is not None and fresh:
            try:
                save_records(records, fresh)
            except OSError as err:  # a read-only cache must not stop the screening
                warnings.warn(f"cannot write the screening records {records}: {err}",
                              stacklevel=2)
    result.bad = [BadImage(Path(paths[i]), reasons[i]) for i in sorted(reasons)]
    return result


__all__ = [
    "BadImage",
    "CorruptImagesError",
    "ScreenResult",
    "corrupt_images_message",
    "failure_reason",
    "load_records",
    "records_file",
    "save_records",
    "screen_paths",
]
