"""The embedded offline dataset: freedesktop icon concepts drawn by many Debian icon themes.

Why icons: the study must run on a fresh machine without hub downloads, and the Debian
archive (reachable through ``apt-get``) ships ~20 independently designed icon themes. Each
theme draws the same freedesktop icon *concepts* (``printer``, ``battery``,
``accessories-calculator``, ...) in its own style, which gives a real many-class dataset:

- class = icon name; instance = one theme's drawing of it. The class name used as text is
  the icon name with ``-``/``_`` replaced by spaces (``raw_class_names`` keep the raw name);
- an image belongs to exactly one class: names that a theme only provides as a symlink to a
  differently named icon (aliases) contribute nothing, and byte-identical source files
  (the same drawing shipped under several names or copied between themes) are kept once,
  under the lexicographically smallest name;
- per theme and name the source is the smallest PNG at least ``size`` px, else the largest
  SVG (rendered with cairosvg), else the largest PNG of at least 32 px. Symbolic
  (monochrome) icons, cursors, animations and small-size-only variants are ignored;
- only one theme per design family is used: dark/light recolourings (breeze-dark,
  Papirus-Dark, Faenza-Dark, the GNOME-Colors variants brave/dust/human/..., Obsidian which
  recolours Faenza) are left out so instances of a class are distinct drawings; the
  recolour-free ``gnome-colors-common`` base is used once;
- images are composited on white, fitted into ``size`` x ``size`` (default 64) RGB and
  stored as PNG under ``$DML_STUDY_CACHE/icons-<size>/`` (default cache
  ``~/.cache/dml_study``) with ``manifest.json`` (package versions, classes, per-class
  counts, split, sha256 of every image). Two builds give identical manifests; a second build
  is a no-op;
- classes with at least ``min_instances`` (8) drawings are kept and split class-disjointly:
  the first half of the sorted class names is ``train``, the second ``test`` (like CUB's
  id-ordered split, related names such as ``battery-*`` stay on one side).

Build it with ``python -m dml_study.data.icons build``; ``get_dataset("icons", ...)`` builds
it on first use. Fetching, locking, caching and the manifest are the shared embedded-dataset
builder's (:mod:`dml_study.data.embedded`); this module only knows about icon themes.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dml_study.paths import DEBS_DIR, ICON_THEMES_DIR

from . import embedded
from .base import IconBuildError, SplitRecords
from .embedded import cache_root
from .images import to_rgb

MANIFEST_FORMAT = 1
DEFAULT_SIZE = 64
DEFAULT_MIN_INSTANCES = 8
#: Below this nominal size a PNG is too coarse to upscale to the output size.
MIN_SOURCE_PX = 32
_SVG_SCALABLE = 10**6  # nominal size given to "scalable" folders


@dataclass(frozen=True)
class IconTheme:
    """A theme folder (``/usr/share/icons/<theme>``) shipped by a Debian package."""

    package: str
    theme: str


#: One theme per independent design (see the module docstring for what is left out).
THEMES: tuple[IconTheme, ...] = (
    IconTheme("adwaita-icon-theme", "Adwaita"),
    IconTheme("breeze-icon-theme", "breeze"),
    IconTheme("deepin-icon-theme", "bloom"),
    IconTheme("elementary-icon-theme", "elementary"),
    IconTheme("elementary-xfce-icon-theme", "elementary-xfce"),
    IconTheme("faba-icon-theme", "Faba"),
    IconTheme("faenza-icon-theme", "Faenza"),
    IconTheme("gnome-colors-common", "gnome-colors-common"),
    IconTheme("gnome-icon-theme", "gnome"),
    IconTheme("lxde-icon-theme", "nuoveXT2"),
    IconTheme("mate-icon-theme", "mate"),
    IconTheme("moka-icon-theme", "Moka"),
    IconTheme("numix-icon-theme", "Numix"),
    IconTheme("numix-icon-theme-circle", "Numix-Circle"),
    IconTheme("oxygen-icon-theme", "oxygen"),
    IconTheme("paper-icon-theme", "Paper"),
    IconTheme("papirus-icon-theme", "Papirus"),
    IconTheme("sugar-icon-theme", "sugar"),
    IconTheme("suru-icon-theme", "suru"),
    IconTheme("tango-icon-theme", "Tango"),
)

_SKIP_PARTS = {"cursors", "animations", "symbolic", "scalable-up-to-32", "sources", "cursor"}
_SIZE_DIR = re.compile(r"^(\d+)(?:x\d+)?(?:@(\d+)x)?$")
_SUFFIXES = {".png", ".svg"}


@dataclass(frozen=True)
class ThemeSource:
    """An unpacked theme: where its files are and which package version they come from."""

    package: str
    version: str
    theme: str
    path: Path


@dataclass(frozen=True)
class Candidate:
    """One file drawing icon ``name`` in a theme."""

    path: Path
    px: int  # nominal pixel size (scale factor applied); _SVG_SCALABLE for scalable/
    svg: bool


# --------------------------------------------------------------------------- locations


def dataset_dir(cache_dir: str | os.PathLike[str] | None = None, size: int = DEFAULT_SIZE) -> Path:
    """Where the rendered dataset of ``size`` px lives."""
    return cache_root(cache_dir) / f"icons-{size}"


def class_text(name: str) -> str:
    """Text-modality name: ``"accessories-calculator"`` -> ``"accessories calculator"``."""
    return name.replace("-", " ").replace("_", " ")


# --------------------------------------------------------------------------- scanning


def _folder_px(parts: Sequence[str]) -> int | None:
    """Nominal size encoded in a theme's folder names (``48x48``, ``64@2x``, ``scalable``)."""
    px = None
    for part in parts:
        if part == "scalable":
            px = _SVG_SCALABLE
            continue
        match = _SIZE_DIR.match(part)
        if match:
            px = int(match.group(1)) * int(match.group(2) or 1)
    return px


def scan_theme(theme_dir: Path) -> dict[str, list[Candidate]]:
    """All usable files of a theme, grouped by icon name.

    A name that is only a symlink to a differently named file is an alias and is skipped:
    its drawing belongs to the target's name.
    """
    found: dict[str, list[Candidate]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(theme_dir):
        rel = Path(dirpath).relative_to(theme_dir).parts
        dirnames[:] = sorted(d for d in dirnames if d.lower() not in _SKIP_PARTS)
        px = _folder_px(rel)
        for filename in sorted(filenames):
            stem, suffix = os.path.splitext(filename)
            if suffix.lower() not in _SUFFIXES or "symbolic" in stem:
                continue
            path = Path(dirpath, filename)
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_file():
                    continue  # dangling alias
                if os.path.splitext(target.name)[0] != stem:
                    continue  # alias of another name: the drawing belongs to that name
            svg = suffix.lower() == ".svg"
            size = px if px is not None else (_SVG_SCALABLE if svg else 0)
            found[stem].append(Candidate(path, size, svg))
    return dict(found)


def choose_candidate(candidates: Iterable[Candidate], size: int) -> Candidate | None:
    """Smallest PNG >= ``size``, else largest SVG, else largest PNG >= 32 px (ties: path)."""
    ranked = []
    for c in candidates:
        if not c.svg and c.px >= size:
            ranked.append(((0, c.px), c))
        elif c.svg:
            ranked.append(((1, -c.px), c))
        elif c.px >= MIN_SOURCE_PX:
            ranked.append(((2, -c.px), c))
    if not ranked:
        return None
    return min(ranked, key=lambda kc: (kc[0], str(kc[1].path)))[1]


def collect_instances(
    sources: Sequence[ThemeSource],
    size: int,
    min_instances: int,
    progress: bool = True,
) -> dict[str, list[tuple[str, Path]]]:
    """``{class name: [(theme, source file), ...]}`` for names with >= ``min_instances`` drawings.

    Every source file (by content) ends up in at most one class and at most once per class.
    """
    chosen: dict[str, dict[str, Path]] = defaultdict(dict)  # name -> theme -> file
    for src in tqdm(sources, desc="scan icon themes", disable=not progress):
        for name, candidates in scan_theme(src.path).items():
            best = choose_candidate(candidates, size)
            if best is not None:
                chosen[name][src.theme] = best.path
    # Only names that could reach the threshold need their files hashed.
    frequent = {n: t for n, t in chosen.items() if len(t) >= min_instances}
    owner: dict[str, str] = {}  # content digest -> owning class
    claims: list[tuple[str, str, Path, str]] = []
    for name in sorted(frequent):
        for theme in sorted(frequent[name]):
            path = frequent[name][theme]
            digest = embedded.sha256_file(path)
            claims.append((name, theme, path, digest))
            owner.setdefault(digest, name)  # names are visited sorted: smallest name wins
    instances: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    used: set[tuple[str, str]] = set()
    for name, theme, path, digest in claims:
        if owner[digest] != name or (name, digest) in used:
            continue
        used.add((name, digest))
        instances[name].append((theme, path))
    return {n: v for n, v in sorted(instances.items()) if len(v) >= min_instances}


# --------------------------------------------------------------------------- rendering


def fit_on_white(image: Image.Image, size: int) -> Image.Image:
    """Composite on white and fit (aspect kept, centred) into a ``size`` x ``size`` RGB image."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        scale = size / max(rgb.size)
        new = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(rgb, ((size - rgb.width) // 2, (size - rgb.height) // 2))
    return canvas


def render_icon(path: Path, size: int) -> bytes:
    """PNG bytes of the icon at ``path`` rendered to ``size`` px RGB on white (deterministic)."""
    if path.suffix.lower() == ".svg":
        import cairosvg  # optional dependency: only the icon builder needs it

        # unsafe=True lets XML entities through: some themes (sugar) define colours as
        # entities. The files come from signed Debian packages, not from users.
        png = cairosvg.svg2png(
            url=str(path), output_width=size, output_height=size, unsafe=True
        )
        source = Image.open(io.BytesIO(png))
    else:
        source = Image.open(path)
    with source:
        source.load()
        image = fit_on_white(source, size)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _render_job(job: tuple[str, str, str, int]) -> tuple[str, str, bytes | None, str | None]:
    name, theme, path, size = job
    try:
        return name, theme, render_icon(Path(path), size), None
    except Exception as err:  # a malformed drawing is dropped, deterministically
        # Machine-independent: theme + file name, not the cache path.
        return name, theme, None, f"{theme}/{Path(path).name}: {type(err).__name__}"


# --------------------------------------------------------------------------- packages


def _install_hint(themes: Sequence[IconTheme]) -> str:
    return embedded.install_hint([t.package for t in themes], "icons-<size>/",
                                 " (and `pip install cairosvg`)")


def _installed(theme: IconTheme) -> ThemeSource | None:
    """The theme from ``/usr/share/icons`` when its package is installed."""
    path = Path("/usr/share/icons") / theme.theme
    if not path.is_dir():
        return None
    version = embedded.installed_version(theme.package)
    return None if version is None else ThemeSource(theme.package, version, theme.theme, path)


def fetch_themes(
    themes: Sequence[IconTheme],
    work_dir: Path,
    deb_dir: Path,
    progress: bool = True,
    num_workers: int = 2,
) -> list[ThemeSource]:
    """Installed themes as they are; the others downloaded as .deb and unpacked in ``work_dir``."""
    sources: dict[str, ThemeSource] = {}
    for theme in themes:
        installed = _installed(theme)
        if installed is not None:
            sources[theme.theme] = installed
    missing = [t for t in themes if t.theme not in sources]
    debs = embedded.fetch_debs([t.package for t in missing], deb_dir, _install_hint(missing))

    def unpack(theme: IconTheme) -> ThemeSource:
        deb = debs[theme.package]
        target = work_dir / theme.package
        if not target.exists():
            # Packages ship several variants (Papirus-Dark, ePapirus, ...): only the one
            # theme used is extracted, minus symbolic icons and cursors.
            embedded.unpack_deb(deb, [f"./usr/share/icons/{theme.theme}"], target,
                                excludes=("*symbolic*", "cursors", "animations"))
        path = target / "usr" / "share" / "icons" / theme.theme
        if not path.is_dir():
            raise IconBuildError(f"{deb} has no usr/share/icons/{theme.theme}")
        return ThemeSource(theme.package, embedded.deb_version(deb), theme.theme, path)

    # xz decompression dominates: unpack packages in parallel subprocesses.
    for src in embedded.parallel_map(unpack, missing, num_workers, progress,
                                     "unpack icon themes"):
        sources[src.theme] = src
    return [sources[t.theme] for t in themes]


# --------------------------------------------------------------------------- building


def _split_classes(classes: Sequence[str]) -> dict[str, list[str]]:
    """First half of the sorted names is train, the rest test (class-disjoint)."""
    ordered = sorted(classes)
    half = (len(ordered) + 1) // 2
    return {"train": ordered[:half], "test": ordered[half:]}


def build_from_sources(
    sources: Sequence[ThemeSource],
    out_dir: Path,
    size: int = DEFAULT_SIZE,
    min_instances: int = DEFAULT_MIN_INSTANCES,
    num_workers: int = 2,
    progress: bool = True,
) -> dict:
    """Render the dataset from unpacked themes into ``out_dir``; returns the manifest.

    Rendering happens in ``out_dir.tmp`` which replaces ``out_dir`` only when complete, so
    an interrupted build never leaves a half dataset that looks finished.
    """
    embedded.check_positive(size=size, min_instances=min_instances)
    instances = collect_instances(sources, size, min_instances, progress=progress)
    jobs = [(n, t, str(p), size) for n, items in instances.items() for t, p in items]
    rendered: dict[str, dict[str, bytes]] = defaultdict(dict)
    failures: list[str] = []
    bar = tqdm(total=len(jobs), desc=f"render icons ({size}px)", disable=not progress)
    if num_workers > 1 and len(jobs) > 50:
        with get_context("spawn").Pool(num_workers) as pool:
            results = pool.imap(_render_job, jobs, chunksize=32)
            for name, theme, data, error in results:
                _collect(rendered, failures, name, theme, data, error)
                bar.update()
    else:
        for job in jobs:
            _collect(rendered, failures, *_render_job(job))
            bar.update()
    bar.close()
    kept = {n: v for n, v in sorted(rendered.items()) if len(v) >= min_instances}
    images = {f"images/{name}/{theme}.png": by_theme[theme]
              for name, by_theme in kept.items() for theme in sorted(by_theme)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "size": size,
        "min_instances": min_instances,
        "packages": [
            {"package": s.package, "version": s.version, "theme": s.theme} for s in sources
        ],
        "renderer": embedded.library_versions(("cairosvg", "pillow")),
        "num_classes": len(kept),
        "num_images": len(images),
        "classes": list(kept),
        "split": _split_classes(list(kept)),
        "counts": {n: len(v) for n, v in kept.items()},
        "render_failures": sorted(failures),
    }
    return embedded.publish(out_dir, images, manifest)


def _collect(rendered, failures, name, theme, data, error) -> None:  # type: ignore[no-untyped-def]
    if data is None:
        failures.append(str(error))
    else:
        rendered[name][theme] = data


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a *complete* dataset in ``out_dir`` (every listed file exists), else None."""
    return embedded.read_manifest(out_dir, MANIFEST_FORMAT)


verify_manifest = embedded.verify_manifest


def build_icons(
    cache_dir: str | os.PathLike[str] | None = None,
    size: int = DEFAULT_SIZE,
    min_instances: int = DEFAULT_MIN_INSTANCES,
    themes: Sequence[IconTheme] = THEMES,
    num_workers: int = 2,
    progress: bool = True,
    force: bool = False,
    keep_intermediate: bool = False,
) -> tuple[Path, dict]:
    """Build (or find) the icon dataset; returns ``(dataset dir, manifest)``.

    A complete dataset with the same ``size``/``min_instances`` is reused as is (no-op).
    The themes' .debs (``<cache>/debs``) and the unpacked themes (``<cache>/icon-themes``,
    ~0.9 GB for ~0.02 GB of images) are read by nothing once the dataset is published; after
    the published images verify against the manifest they are removed
    (:func:`dml_study.data.embedded.clean_after_build`), unless ``keep_intermediate``. A
    re-build fetches them again with ``apt-get download``.
    """
    embedded.check_positive(size=size, min_instances=min_instances, num_workers=num_workers)
    root = cache_root(cache_dir)
    out_dir = dataset_dir(root, size)

    def existing() -> dict | None:
        manifest = None if force else read_manifest(out_dir)
        ok = manifest is not None and manifest.get("min_instances") == min_instances
        return manifest if ok else None

    def build() -> dict:
        return _build_locked(root, out_dir, size, min_instances, themes, num_workers,
                             progress, keep_intermediate)[1]

    return out_dir, embedded.locked_build(root, f"icons-{size}", existing, build)


def _build_locked(
    root: Path,
    out_dir: Path,
    size: int,
    min_instances: int,
    themes: Sequence[IconTheme],
    num_workers: int,
    progress: bool,
    keep_intermediate: bool,
) -> tuple[Path, dict]:
    """Fetch the themes and render them (the caller holds the build lock), then remove
    the .debs and unpacked themes unless ``keep_intermediate``."""
    try:
        import cairosvg  # noqa: F401
    except ImportError as err:
        raise IconBuildError(
            f"no icon dataset in {out_dir} and cairosvg is missing to build it: "
            f"`pip install cairosvg` (or install the project with the [offline] extra)"
        ) from err
    work_dir, deb_dir = root / ICON_THEMES_DIR, root / DEBS_DIR
    with embedded.using_intermediates(root):
        try:
            sources = fetch_themes(themes, work_dir, deb_dir, progress, num_workers)
        except IconBuildError as err:
            raise IconBuildError(f"cannot build the icon dataset in {out_dir}: {err}") from err
        manifest = build_from_sources(sources, out_dir, size, min_instances, num_workers,
                                      progress)
    if not keep_intermediate:
        debs = embedded.deb_files(deb_dir, [t.package for t in themes])
        embedded.clean_after_build(root, out_dir, manifest, [work_dir, *debs])
    return out_dir, manifest


def load_records(
    split: str,
    cache_dir: str | os.PathLike[str] | None = None,
    icon_size: int = DEFAULT_SIZE,
    build: bool = True,
    progress: bool = True,
) -> SplitRecords:
    """Records of the ``train``/``test`` half; builds the dataset first when ``build``."""
    out_dir = dataset_dir(cache_dir, icon_size)
    out_dir, manifest = embedded.complete_or_build(
        out_dir, read_manifest(out_dir), build,
        lambda: build_icons(cache_dir, size=icon_size, progress=progress),
        "icon", f"python -m dml_study.data.icons build --size {icon_size}",
    )
    if split not in manifest["split"]:
        raise ValueError(f"unknown split {split!r} for icons; valid: {sorted(manifest['split'])}")
    names = manifest["split"][split]
    paths, ids = embedded.class_files(out_dir, manifest, names)
    return SplitRecords(
        paths=paths,
        class_ids=ids,
        class_names={n: class_text(n) for n in names},
        raw_class_names={n: n for n in names},
    )


# --------------------------------------------------------------------------- CLI


def summary(out_dir: Path, manifest: dict) -> str:
    """Human-readable counts of a built dataset."""
    counts = np.array(list(manifest["counts"].values()))
    lines = [
        f"icons dataset: {manifest['num_classes']} classes, {manifest['num_images']} images "
        f"({manifest['size']} px, {len(manifest['packages'])} themes)",
        f"  instances per class: min {counts.min()}, median {int(np.median(counts))}, "
        f"max {counts.max()}",
    ]
    return "\n".join([*lines, *embedded.split_summary(out_dir, manifest)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dml_study.data.icons build [--cache-dir D] [--size 64] [--quiet]``."""

    def add_options(b: argparse.ArgumentParser) -> None:
        b.add_argument("--min-instances", type=int, default=DEFAULT_MIN_INSTANCES)

    def build(args: argparse.Namespace) -> tuple[Path, dict]:
        return build_icons(
            args.cache_dir, size=args.size, min_instances=args.min_instances,
            num_workers=args.workers, progress=not args.quiet, force=args.force,
            keep_intermediate=args.keep_intermediate,
        )

    return embedded.build_main(
        argv, module="dml_study.data.icons", description=__doc__, what="icon",
        sources="themes", default_size=DEFAULT_SIZE, add_options=add_options, build=build,
        summary=summary, errors=(IconBuildError,),
    )


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "THEMES",
    "Candidate",
    "IconBuildError",
    "IconTheme",
    "ThemeSource",
    "build_from_sources",
    "build_icons",
    "cache_root",
    "choose_candidate",
    "class_text",
    "collect_instances",
    "dataset_dir",
    "load_records",
    "main",
    "read_manifest",
    "render_icon",
    "scan_theme",
    "summary",
    "verify_manifest",
]
