"""``python -m dml_study.cache list|clean``: what the cache holds, and removing what is not needed.

The cache root (:func:`dml_study.paths.cache_root`: ``$DML_STUDY_CACHE`` or
``~/.cache/dml_study``) holds, per top-level entry (:func:`classify`):

==================  ===============  ====================================================
entry               kind             what it is for
==================  ===============  ====================================================
``icons-64/``       dataset          an embedded dataset (``manifest.json`` + images)
``debs/``           intermediate     ``.deb`` files the embedded builders downloaded
``icon-themes/``    intermediate     icon themes unpacked from them
``glyph-fonts/``    intermediate     fonts and Unihan unpacked from them
``*.tmp/``          intermediate     an interrupted build's unfinished output
``frozen_features`` features         backbone features of the frozen tier
``text_embeddings`` text embeddings  sentence-encoder embeddings of class names
``verified/``       verify records   which image files decoded (``data verify``)
``label-fonts/``    label fonts      the glyph classes' characters for figure labels
``*.lock``          lock             build locks (held only while a build runs)
anything else       unknown          listed, never removed
==================  ===============  ====================================================

Intermediate material is read by nothing once a build is verified (the builders remove it
themselves since this version; older caches keep it), so ``clean`` removes it by default;
``--all`` removes every known entry (datasets are rebuilt, features and embeddings recomputed
on next use), ``--older-than 30d`` only entries not modified for that long (an entry's age is
that of its newest direct child), ``--dry-run`` only prints. ``clean`` never removes a dataset
whose build lock is held (it is being built) nor intermediates while a build holds their
shared lock: it takes each lock without waiting, skips what is busy, and holds the lock while
it deletes, so a build that starts meanwhile waits.

Sizes are disk usage (blocks allocated, hard links counted once), as ``du`` reports them,
in MiB/GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dml_study.errors import EXIT_USAGE, UserFacingError, run_cli
from dml_study.paths import (
    DEBS_DIR,
    FROZEN_FEATURES_DIR,
    GLYPH_FONTS_DIR,
    ICON_THEMES_DIR,
    INTERMEDIATE_LOCK,
    LABEL_FONTS_DIR,
    TEXT_EMBEDDINGS_DIR,
    VERIFY_RECORDS_DIR,
    cache_root,
)

DATASET = "dataset"
INTERMEDIATE = "intermediate"
FEATURES = "features"
TEXT = "text embeddings"
RECORDS = "verify records"
FONTS = "label fonts"
LOCK = "lock"
UNKNOWN = "unknown"
#: Kinds ``clean --all`` removes (``unknown`` entries and locks are never removed).
REMOVABLE = (DATASET, INTERMEDIATE, FEATURES, TEXT, RECORDS, FONTS)

_FIXED = {
    DEBS_DIR: (INTERMEDIATE, "Debian packages downloaded by the embedded builders; "
                             "downloaded again by a re-build"),
    ICON_THEMES_DIR: (INTERMEDIATE, "icon themes unpacked from their .debs; read only while "
                                    "the icons dataset is built"),
    GLYPH_FONTS_DIR: (INTERMEDIATE, "fonts and Unihan unpacked from their .debs; read only "
                                    "while the glyphs dataset is built"),
    FROZEN_FEATURES_DIR: (FEATURES, "backbone features of the frozen tier; recomputed when "
                                    "missing"),
    TEXT_EMBEDDINGS_DIR: (TEXT, "sentence-encoder embeddings of class names; recomputed "
                                "when missing"),
    VERIFY_RECORDS_DIR: (RECORDS, "which image files decoded (by path, size, mtime); "
                                  "without them the next screening decodes again"),
    LABEL_FONTS_DIR: (FONTS, "subsets of the glyph dataset's own fonts with every class "
                             "character, for figure labels; `python -m dml_study.data.glyphs "
                             "build` makes them again"),
    INTERMEDIATE_LOCK: (LOCK, "shared lock of the intermediate folders (held during builds)"),
}


class CacheUsageError(UserFacingError):
    """A bad option value (exit code 2)."""

    exit_code = EXIT_USAGE


@dataclass
class CacheEntry:
    """One top-level entry of the cache root."""

    path: Path
    kind: str
    purpose: str
    size: int
    mtime: float

    @property
    def name(self) -> str:
        return self.path.name + ("/" if self.path.is_dir() else "")

    @property
    def lock(self) -> Path:
        """The lock that protects it: a dataset's build lock, or the intermediates' lock."""
        if self.kind == INTERMEDIATE and self.path.name.endswith(".tmp"):
            return self.path.with_name(self.path.name.removesuffix(".tmp") + ".lock")
        if self.kind == INTERMEDIATE:
            return self.path.parent / INTERMEDIATE_LOCK
        return self.path.with_name(self.path.name + ".lock")


def disk_usage(path: Path) -> int:
    """Bytes allocated to ``path`` and everything below it (like ``du``; links not
    followed, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = current.lstat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if current.is_dir() and not current.is_symlink():
            with contextlib.suppress(OSError):
                stack.extend(current.iterdir())
    return total


def newest_mtime(path: Path) -> float:
    """The newest mtime of ``path`` and its direct children (an entry's age)."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            times += [child.lstat().st_mtime for child in path.iterdir()]
    return max(times)


def _dataset_purpose(path: Path) -> str:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "embedded dataset (manifest unreadable: rebuild it)"
    name = path.name.rsplit("-", 1)[0]
    return (f"embedded dataset {name} ({manifest.get('size', '?')} px): "
            f"{manifest.get('num_classes', '?')} classes, {manifest.get('num_images', '?')} "
            f"images; rebuilt by `python -m dml_study.data.{name} build`")


def classify(path: Path) -> tuple[str, str]:
    """``(kind, purpose)`` of a top-level cache entry (see the module docstring)."""
    name = path.name
    if name in _FIXED:
        kind, purpose = _FIXED[name]
        if path.is_dir() and kind in (FEATURES, TEXT, RECORDS):
            count = sum(1 for p in path.iterdir() if not p.name.startswith("."))
            purpose = f"{purpose} ({count} file{'s' * (count != 1)})"
        return kind, purpose
    if name.endswith(".lock") and path.is_file():
        return LOCK, f"build lock of {name.removesuffix('.lock')} (held only while it is built)"
    if name.endswith(".tmp") and path.is_dir():
        return INTERMEDIATE, (f"unfinished output of an interrupted build of "
                              f"{name.removesuffix('.tmp')}")
    if path.is_dir() and (path / "manifest.json").is_file() and re.fullmatch(r".+-\d+", name):
        return DATASET, _dataset_purpose(path)
    return UNKNOWN, "not written by dml_study (listed, never removed)"


def list_entries(root: Path) -> list[CacheEntry]:
    """Every top-level entry of ``root``, sorted by name."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        kind, purpose = classify(path)
        if kind == LOCK:
            with _try_lock(path) as free:
                purpose += "" if free else "; HELD NOW: a build is running"
        out.append(CacheEntry(path, kind, purpose, disk_usage(path), newest_mtime(path)))
    return out


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, as ``du -h``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"2w"``, ``"90m"``, ``"45s"`` (a bare number: days) in seconds."""
    match = _AGE.match(text)
    if not match:
        raise CacheUsageError(f"--older-than {text!r}: expected a number and a unit "
                              f"(s, m, h, d, w), e.g. 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@contextlib.contextmanager
def _try_lock(lock: Path) -> Iterator[bool]:
    """Take ``lock`` exclusively without waiting; yields whether it was free."""
    if not lock.exists():
        yield True
        return
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class CleanAction:
    """What ``clean`` did (or would do) with one entry."""

    entry: CacheEntry
    removed: bool
    reason: str = ""


def clean(
    root: Path,
    *,
    everything: bool = False,
    older_than: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[CleanAction]:
    """Remove intermediate entries of ``root`` (``everything``: every removable kind).

    ``older_than`` (seconds) keeps entries modified more recently; ``dry_run`` removes
    nothing. Entries whose lock is held are skipped (see the module docstring).
    """
    now = time.time() if now is None else now
    kinds = REMOVABLE if everything else (INTERMEDIATE,)
    actions = []
    for entry in list_entries(root):
        if entry.kind not in kinds:
            continue
        if older_than is not None and now - entry.mtime < older_than:
            continue
        with _try_lock(entry.lock) as free:
            if not free:
                what = "being built" if entry.kind != INTERMEDIATE or entry.path.name.endswith(
                    ".tmp") else "in use by a running build"
                actions.append(CleanAction(entry, False, f"{what} (lock {entry.lock.name} held)"))
                continue
            if not dry_run:
                if entry.path.is_dir() and not entry.path.is_symlink():
                    shutil.rmtree(entry.path)
                else:
                    entry.path.unlink()
            actions.append(CleanAction(entry, True))
    return actions


def _print_entries(root: Path, entries: Sequence[CacheEntry], now: float) -> None:
    total = sum(e.size for e in entries)
    print(f"cache root: {root} ({human_size(total)} in {len(entries)} entries)")
    if not entries:
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"  {e.name:<{width}}  {e.kind:<15}  {human_size(e.size):>10}  "
              f"{human_age(now - e.mtime):>6} old  {e.purpose}")
    by_kind: dict[str, int] = {}
    for e in entries:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + e.size
    print("  by kind: " + ", ".join(f"{k} {human_size(v)}" for k, v in sorted(by_kind.items())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None,
                        help="cache root (default $DML_STUDY_CACHE or ~/.cache/dml_study)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="each entry with its kind, size, age and purpose")
    c = sub.add_parser("clean", help="remove intermediate entries (or more)")
    c.add_argument("--all", action="store_true", dest="everything",
                   help="remove every known entry: datasets, features, text embeddings, "
                        "verify records and intermediates (unknown entries are kept)")
    c.add_argument("--older-than", default=None, metavar="AGE",
                   help="only entries not modified for AGE (e.g. 30d, 12h, 2w)")
    c.add_argument("--dry-run", action="store_true", help="print what would be removed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = cache_root(args.cache_dir)
    now = time.time()
    if args.command == "list":
        _print_entries(root, list_entries(root), now)
        return 0
    older = parse_age(args.older_than) if args.older_than is not None else None
    actions = clean(root, everything=args.everything, older_than=older, dry_run=args.dry_run,
                    now=now)
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for a in actions:
        if a.removed:
            freed += a.entry.size
            print(f"{verb} {a.entry.name} ({a.entry.kind}, {human_size(a.entry.size)})")
        else:
            print(f"kept {a.entry.name}: {a.reason}")
    print(f"{verb} {human_size(freed)} from {root}" if actions else
          f"nothing to remove in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))


__all__ = [
    "CacheEntry",
    "CleanAction",
    "classify",
    "clean",
    "disk_usage",
    "list_entries",
    "main",
    "parse_age",
]
