"""The shared builder of the embedded offline datasets (``icons``, ``glyphs``).

An embedded dataset is rendered on first use from Debian packages (fetched with
``apt-get download``, or taken from ``/usr/share`` when installed) into a cache folder
``$DML_STUDY_CACHE/<name>-<size>/`` (default cache ``~/.cache/dml_study``) holding
``images/`` and a ``manifest.json`` (package versions, classes, split, sha256 of every
image). What every embedded dataset shares lives here:

- :func:`cache_root` — where the cache is (re-exported from :mod:`dml_study.paths`, the one
  resolver of every cache);
- :func:`locked_build` — one process builds, concurrent ones (DDP ranks, parallel notebooks)
  wait on a file lock and then find the finished manifest; a complete dataset is a no-op;
- :func:`fetch_debs` / :func:`unpack_deb` / :func:`installed_version` — package access with a
  clear error naming the ``apt-get install ...`` line when neither packages nor a cache can
  be had;
- :func:`publish` — images and manifest are written to ``<dir>.tmp`` which replaces ``<dir>``
  only when complete (an interrupted build never looks finished); the manifest is written as
  ``json.dumps(manifest, indent=1, sort_keys=True)`` so two builds give identical bytes;
- :func:`read_manifest` / :func:`verify_manifest` — a dataset counts as built only when every
  listed file exists; ``verify`` re-checks the sha256 of each;
- :func:`check_positive` — build arguments are validated before anything is downloaded;
- :func:`using_intermediates` / :func:`remove_intermediates` — the lean cache: a builder
  holds the shared lock ``intermediate.lock`` while it fetches and reads ``.deb`` files and
  unpacked trees, and once its dataset is published *and verified* (every image's sha256
  equals the manifest) it removes that material (``--keep-intermediate`` keeps it). Removal
  takes the lock exclusively without waiting, so material another build is reading is never
  deleted: the last builder out cleans up. A later re-build downloads the ``.deb`` files again
  with ``apt-get download``.

The dataset-specific part (which packages, how to turn their files into images, classes and
split) stays in :mod:`dml_study.data.icons` and :mod:`dml_study.data.glyphs`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dml_study.paths import CACHE_ENV, DEBS_DIR, INTERMEDIATE_LOCK, cache_root

from .base import EmbeddedBuildError


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the argument when a build parameter is < 1 (or < 8 px).

    Called before any download so that ``--size 0`` fails at once.
    """
    for name, value in values.items():
        low = 8 if name == "size" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


# --------------------------------------------------------------------------- manifests


def read_manifest(out_dir: Path, fmt: int) -> dict | None:
    """The manifest of a *complete* dataset in ``out_dir`` (every listed file exists), else None."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("format") != fmt:
        return None
    if not all((out_dir / rel).is_file() for rel in manifest.get("files", {})):
        return None
    return manifest


def verify_manifest(out_dir: Path, manifest: dict) -> list[str]:
    """Files whose sha256 differs from the manifest (empty when the dataset is intact)."""
    return [
        rel for rel, digest in sorted(manifest["files"].items())
        if sha256_file(out_dir / rel) != digest
    ]


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical serialisation (sorted keys, indent 1, trailing newline)."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def publish(out_dir: Path, images: Mapping[str, bytes], manifest: dict) -> dict:
    """Write ``images`` (relative path -> bytes) and ``manifest`` as the dataset ``out_dir``.

    ``manifest["files"]`` is set to the sha256 of every image. Everything is written to
    ``<out_dir>.tmp`` first, which then replaces ``out_dir``.
    """
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files: dict[str, str] = {}
    for rel in images:
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images[rel])
        files[rel] = sha256_bytes(images[rel])
    manifest["files"] = files
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "manifest.json").write_bytes(manifest_bytes(manifest))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return manifest


def locked_build(
    root: Path,
    lock_name: str,
    existing: Callable[[], dict | None],
    build: Callable[[], dict],
) -> dict:
    """``existing()`` when it finds a complete dataset, else ``build()`` under a file lock.

    Several processes may ask for the dataset at once: one builds, the others wait on the
    lock ``<root>/<lock_name>.lock`` and then find the finished manifest.
    """
    found = existing()
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{lock_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = existing()
            return found if found is not None else build()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def library_versions(dists: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``dists`` (``"missing"`` when absent), for the manifest."""
    versions = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


# --------------------------------------------------------------------------- packages


def run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


def install_hint(packages: Sequence[str], dirs: str, extra: str = "") -> str:
    """How to get the packages (or a built cache) — appended to every fetch error."""
    return (
        "The embedded dataset is rendered from Debian packages. Either\n"
        f"  - run `sudo apt-get update` (so `apt-get download` can find them) and retry, or\n"
        f"  - install them: `sudo apt-get install {' '.join(packages)}`{extra}, or\n"
        f"  - copy a built cache folder ({dirs} with manifest.json) into "
        f"${CACHE_ENV} or ~/.cache/dml_study."
    )


def deb_version(deb: Path) -> str:
    """The ``Version`` field of a .deb file."""
    result = run(["dpkg-deb", "-f", str(deb), "Version"])
    if result.returncode:
        raise EmbeddedBuildError(f"cannot read {deb}: {result.stderr.strip()}")
    return result.stdout.strip()


def installed_version(package: str) -> str | None:
    """The version of ``package`` when dpkg says it is installed, else None."""
    if shutil.which("dpkg-query") is None:
        return None
    result = run(["dpkg-query", "-W", "-f=${Status}|${Version}", package])
    if result.returncode or "install ok installed" not in result.stdout:
        return None
    return result.stdout.split("|")[1].strip()


def apt_download(packages: Sequence[str], deb_dir: Path) -> None:
    """``apt-get download`` into ``deb_dir``; as root, one ``apt-get update`` when needed."""
    if shutil.which("apt-get") is None:
        raise EmbeddedBuildError("apt-get is not available on this machine")
    deb_dir.mkdir(parents=True, exist_ok=True)
    result = run(["apt-get", "download", *packages], cwd=deb_dir)
    if result.returncode and hasattr(os, "geteuid") and os.geteuid() == 0:
        run(["apt-get", "update"])  # stale/missing package lists: refresh once
        result = run(["apt-get", "download", *packages], cwd=deb_dir)
    if result.returncode:
        raise EmbeddedBuildError(f"`apt-get download {' '.join(packages)}` failed:\n"
                                 f"{result.stderr.strip()[-800:]}")


def cached_deb(deb_dir: Path, package: str) -> Path | None:
    """The newest ``<package>_*.deb`` in ``deb_dir``."""
    debs = sorted(deb_dir.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def fetch_debs(packages: Sequence[str], deb_dir: Path, hint: str) -> dict[str, Path]:
    """``{package: .deb}``, downloading those not yet in ``deb_dir`` (errors end with ``hint``)."""
    missing = sorted({p for p in packages if cached_deb(deb_dir, p) is None})
    if missing:
        try:
            apt_download(missing, deb_dir)
        except EmbeddedBuildError as err:
            raise EmbeddedBuildError(f"{err}\n{hint}") from err
    debs = {}
    for package in packages:
        deb = cached_deb(deb_dir, package)
        if deb is None:
            raise EmbeddedBuildError(f"no .deb for {package} in {deb_dir}\n{hint}")
        debs[package] = deb
    return debs


def unpack_deb(deb: Path, members: Sequence[str], target: Path,
               excludes: Sequence[str] = ()) -> None:
    """Unpack only ``members`` (tar paths such as ``./usr/share/icons/Tango``) of ``deb``.

    Extracting just what is used keeps unpacking and the clean-up after the build fast.
    The tree appears at ``target`` only when complete.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    result = subprocess.run(
        ["tar", "-x", "-C", str(partial), "--wildcards", "--no-wildcards-match-slash",
         *[f"--exclude={e}" for e in excludes], *members],
        stdin=tar.stdout, capture_output=True, text=True, check=False,
    )
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() or result.returncode:
        raise EmbeddedBuildError(f"unpacking {' '.join(members)} from {deb} failed: "
                                 f"{result.stderr.strip()}")
    partial.rename(target)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], num_workers: int,
                 progress: bool, desc: str) -> list[Any]:
    """``[fn(x) for x in items]`` on threads (for subprocess-bound work such as unpacking)."""
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc,
                         disable=not progress))



# --------------------------------------------------------------------------- lean cache


@contextlib.contextmanager
def intermediate_lock(root: Path, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Hold ``<root>/intermediate.lock`` (shared or exclusive); yields whether it was taken.

    ``wait=False`` does not block: it yields ``False`` at once when another process holds
    the lock in a conflicting mode. The lock is :func:`fcntl.flock`-based, so it is released
    when its holder exits, however it exits.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / INTERMEDIATE_LOCK, "a") as fh:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh, flags)
        except BlockingIOError:
            taken = False
        else:
            taken = True
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(fh, fcntl.LOCK_UN)


def using_intermediates(root: Path) -> contextlib.AbstractContextManager[bool]:
    """The shared lock a builder holds while it fetches, unpacks and reads intermediates."""
    return intermediate_lock(root, exclusive=False)


def deb_files(deb_dir: Path, packages: Sequence[str]) -> list[Path]:
    """The cached ``<package>_*.deb`` files of ``packages`` in ``deb_dir``."""
    return sorted({deb for p in packages for deb in deb_dir.glob(f"{p}_*.deb")})


def remove_intermediates(root: Path, paths: Sequence[Path]) -> list[Path] | None:
    """Delete ``paths`` (files or trees) unless another process uses the intermediates.

    Takes ``intermediate.lock`` exclusively without waiting: when a build (or another
    cleaner) holds it, nothing is removed and ``None`` is returned; otherwise the paths that
    existed and were removed. An emptied ``<root>/debs`` folder is removed too.
    """
    with intermediate_lock(root, exclusive=True, wait=False) as taken:
        if not taken:
            return None
        removed = []
        for path in paths:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                continue
            removed.append(path)
        with contextlib.suppress(OSError):  # not empty: other packages' .debs remain
            (root / DEBS_DIR).rmdir()
        return removed


def clean_after_build(root: Path, out_dir: Path, manifest: dict,
                      intermediates: Sequence[Path]) -> list[Path] | None:
    """Remove ``intermediates`` once the dataset in ``out_dir`` is verified against
    ``manifest`` (every image's sha256); a dataset that does not verify keeps them (and a
    warning names the files), so a re-build does not have to download anything again.
    Returns what :func:`remove_intermediates` returns (``None`` also when not verified)."""
    bad = verify_manifest(out_dir, manifest)
    if bad:
        warnings.warn(f"{len(bad)} file(s) in {out_dir} differ from its manifest (e.g. "
                      f"{bad[:3]}); the downloaded and unpacked packages are kept",
                      stacklevel=2)
        return None
    return remove_intermediates(root, intermediates)


# --------------------------------------------------------------------------- loading


def complete_or_build(
    out_dir: Path,
    manifest: dict | None,
    build: bool,
    build_dataset: Callable[[], tuple[Path, dict]],
    what: str,
    command: str,
) -> tuple[Path, dict]:
    """``(out_dir, manifest)`` of a complete dataset: the given one, else built now with
    ``build_dataset()`` when ``build``, else :class:`EmbeddedBuildError` saying that no
    complete ``what`` dataset is in ``out_dir`` and that ``command`` builds it."""
    if manifest is not None:
        return out_dir, manifest
    if not build:
        raise EmbeddedBuildError(f"no complete {what} dataset in {out_dir}; run `{command}`")
    return build_dataset()


def class_files(
    out_dir: Path, manifest: dict, names: Sequence[str]
) -> tuple[list[Path], list[str]]:
    """Paths of the images of the classes ``names`` (in that order; each class's files in
    sorted order) and the class of each, from the manifest's ``images/<class>/...`` files."""
    by_class: dict[str, list[str]] = {}
    for rel in sorted(manifest["files"]):
        by_class.setdefault(rel.split("/")[1], []).append(rel)
    paths, ids = [], []
    for name in names:
        for rel in by_class.get(name, []):
            paths.append(out_dir / rel)
            ids.append(name)
    return paths, ids


# --------------------------------------------------------------------------- command line


def split_summary(out_dir: Path, manifest: dict) -> list[str]:
    """The summary lines every embedded dataset ends with: classes and images per split,
    and where the manifest is."""
    split = manifest["split"]
    lines = []
    for name in ("train", "test"):
        n_img = sum(manifest["counts"][c] for c in split[name])
        lines.append(f"  {name}: {len(split[name])} classes, {n_img} images")
    lines.append(f"  manifest: {out_dir / 'manifest.json'}")
    return lines


def build_main(
    argv: Sequence[str] | None,
    *,
    module: str,
    description: str | None,
    what: str,
    sources: str,
    default_size: int,
    add_options: Callable[[argparse.ArgumentParser], None],
    build: Callable[[argparse.Namespace], tuple[Path, dict]],
    summary: Callable[[Path, dict], str],
    errors: tuple[type[BaseException], ...] = (EmbeddedBuildError,),
) -> int:
    """``python -m <module> build [--cache-dir D] [--size N] <options> [--workers N] [--force]
    [--keep-intermediate] [--quiet]``: build (or verify) an embedded dataset; the exit code.

    ``add_options`` adds the dataset's own options (after ``--size``); ``build(args)``
    returns ``(out_dir, manifest)``. An error of a type in ``errors``, or a file that differs
    from the manifest, is printed and gives exit code 1; otherwise ``summary`` is printed.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help=f"build (or verify) the embedded {what} dataset")
    b.add_argument("--cache-dir", default=None, help=f"default ${CACHE_ENV} or ~/.cache/dml_study")
    b.add_argument("--size", type=int, default=default_size, help="image side in px")
    add_options(b)
    b.add_argument("--workers", type=int, default=2, help="render processes")
    b.add_argument("--force", action="store_true", help="rebuild even if complete")
    b.add_argument("--keep-intermediate", action="store_true",
                   help=f"keep the downloaded .debs and the unpacked {sources} after a verified "
                        f"build (default: removed; a re-build downloads them again)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out_dir, manifest = build(args)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    bad = verify_manifest(out_dir, manifest)
    if bad:
        print(f"error: {len(bad)} file(s) differ from the manifest, e.g. {bad[:3]}; "
              f"rebuild with --force", file=sys.stderr)
        return 1
    print(summary(out_dir, manifest))
    print(f"  time: {time.perf_counter() - start:.1f} s")
    return 0


__all__ = [
    "CACHE_ENV",
    "EmbeddedBuildError",
    "apt_download",
    "build_main",
    "cache_root",
    "cached_deb",
    "check_positive",
    "class_files",
    "clean_after_build",
    "complete_or_build",
    "deb_files",
    "deb_version",
    "fetch_debs",
    "install_hint",
    "installed_version",
    "intermediate_lock",
    "library_versions",
    "locked_build",
    "manifest_bytes",
    "parallel_map",
    "publish",
    "read_manifest",
    "remove_intermediates",
    "run",
    "sha256_bytes",
    "sha256_file",
    "split_summary",
    "unpack_deb",
    "using_intermediates",
    "verify_manifest",
]
