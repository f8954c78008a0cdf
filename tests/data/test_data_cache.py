"""Lean caches: builders remove their intermediates after a verified build, and
``python -m dml_study.cache list|clean`` shows and removes what the cache holds."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

import pytest
from test_data_icons import make_fake_themes

from dml_study import cache as cache_cli
from dml_study.data import embedded, icons
from dml_study.data.icons import IconTheme, build_icons
from dml_study.paths import DEBS_DIR, ICON_THEMES_DIR, INTERMEDIATE_LOCK

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def fake_deb(deb_dir: Path, package: str, tree: Path, prefix: str) -> Path:
    """A .deb of ``package`` 1.0 holding ``tree`` under ``prefix`` (e.g. usr/share/icons/x)."""
    root = deb_dir / f"{package}-tree"
    shutil.copytree(tree, root / prefix, symlinks=True)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        f"Description: test\n")
    deb = deb_dir / f"{package}_1.0_all.deb"
    embedded.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                  str(deb)]).check_returncode()
    shutil.rmtree(root)
    return deb


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Fake icon themes packed as .debs in a private "Debian archive": ``apt_download``
    copies them from there (as ``apt-get download`` would) and counts the calls."""
    sources = make_fake_themes(tmp_path / "trees")
    mirror = tmp_path / "archive"
    mirror.mkdir()
    themes = []
    for src in sources:
        fake_deb(mirror, src.package, src.path, f"usr/share/icons/{src.theme}")
        themes.append(IconTheme(src.package, src.theme))
    calls: list[list[str]] = []

    def apt_download(packages, deb_dir):  # type: ignore[no-untyped-def]
        calls.append(list(packages))
        deb_dir.mkdir(parents=True, exist_ok=True)
        for package in packages:
            shutil.copy(mirror / f"{package}_1.0_all.deb", deb_dir)

    monkeypatch.setattr(embedded, "apt_download", apt_download)
    monkeypatch.setattr(embedded, "installed_version", lambda package: None)
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "unused-cache"))
    return {"themes": tuple(themes), "calls": calls}


def _build(cache: Path, themes, **kw):  # type: ignore[no-untyped-def]
    return build_icons(cache, size=32, min_instances=3, themes=themes, num_workers=1,
                       progress=False, **kw)


def test_a_verified_build_removes_debs_and_unpacked_themes(archive, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out, manifest = _build(cache, archive["themes"])
    assert archive["calls"] == [sorted(t.package for t in archive["themes"])]
    assert icons.verify_manifest(out, manifest) == [] and manifest["num_images"] == 10
    assert not (cache / ICON_THEMES_DIR).exists() and not (cache / DEBS_DIR).exists()
    # A re-build after the clean-up fetches the packages again and gives the same dataset.
    _, manifest2 = _build(cache, archive["themes"], force=True)
    assert len(archive["calls"]) == 2
    assert embedded.manifest_bytes(manifest2) == embedded.manifest_bytes(manifest)
    assert not (cache / ICON_THEMES_DIR).exists()


def test_keep_intermediate_keeps_them(archive, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _build(cache, archive["themes"], keep_intermediate=True)
    assert sorted(p.name for p in (cache / DEBS_DIR).iterdir()) == sorted(
        f"{t.package}_1.0_all.deb" for t in archive["themes"])
    assert (cache / ICON_THEMES_DIR).is_dir()
    # A later build with the intermediates present does not download anything.
    _build(cache, archive["themes"], force=True, keep_intermediate=True)
    assert len(archive["calls"]) == 1


def test_other_packages_debs_and_a_build_in_progress_are_left_alone(archive, tmp_path: Path
                                                                    ) -> None:
    cache = tmp_path / "cache"
    (cache / DEBS_DIR).mkdir(parents=True)
    other = cache / DEBS_DIR / "fonts-other_1.0_all.deb"  # e.g. the glyph builder's
    other.write_bytes(b"deb")
    _build(cache, archive["themes"])
    assert other.exists() and not (cache / ICON_THEMES_DIR).exists()
    # While another build holds the intermediates' shared lock, nothing is removed.
    with embedded.using_intermediates(cache):
        _build(cache, archive["themes"], force=True)
    assert (cache / ICON_THEMES_DIR).is_dir()


def test_an_unverified_build_keeps_its_intermediates(archive, tmp_path: Path,
                                                    monkeypatch) -> None:
    monkeypatch.setattr(embedded, "verify_manifest", lambda out, manifest: ["images/x.png"])
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="differ from its manifest"):
        _build(cache, archive["themes"])
    assert (cache / ICON_THEMES_DIR).is_dir() and (cache / DEBS_DIR).is_dir()


def test_build_cli_passes_keep_intermediate(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def fake_build(*args, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        raise icons.IconBuildError("stop here")

    monkeypatch.setattr(icons, "build_icons", fake_build)
    assert icons.main(["build", "--cache-dir", str(tmp_path), "--keep-intermediate"]) == 1
    assert seen["keep_intermediate"] is True
    assert icons.main(["build", "--cache-dir", str(tmp_path)]) == 1
    assert seen["keep_intermediate"] is False


# --------------------------------------------------------------------------- the cache CLI


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


@pytest.fixture
def full_cache(tmp_path: Path) -> Path:
    """A cache root with one entry of every kind."""
    root = tmp_path / "c"
    _write(root / "icons-32" / "images" / "a" / "t.png", 4096)
    (root / "icons-32" / "manifest.json").write_text(
        '{"size": 32, "num_classes": 2, "num_images": 10}')
    (root / "icons-32.lock").touch()
    _write(root / "debs" / "x_1.0_all.deb", 3 << 20)
    _write(root / "icon-themes" / "x" / "usr" / "a.svg", 1 << 20)
    _write(root / "glyphs-32.tmp" / "images" / "b.png", 1000)
    _write(root / "frozen_features" / "icons-deit-32px-v1-abc.npz", 2 << 20)
    _write(root / "text_embeddings" / "k.npy", 1000)
    _write(root / "verified" / "icons.json", 100)
    _write(root / "my-notes.txt", 10)
    (root / INTERMEDIATE_LOCK).touch()
    return root


def test_list_names_every_entry_with_kind_size_and_purpose(full_cache: Path, capsys) -> None:
    assert cache_cli.main(["--cache-dir", str(full_cache), "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    expected = {
        "icons-32/": ("dataset", "embedded dataset icons (32 px): 2 classes, 10 images"),
        "debs/": ("intermediate", "Debian packages"),
        "icon-themes/": ("intermediate", "icon themes unpacked"),
        "glyphs-32.tmp/": ("intermediate", "interrupted build of glyphs-32"),
        "frozen_features/": ("features", "(1 file)"),
        "text_embeddings/": ("text embeddings", "class names"),
        "verified/": ("verify records", "which image files decoded"),
        "my-notes.txt": ("unknown", "never removed"),
        "icons-32.lock": ("lock", "build lock of icons-32"),
    }
    for name, (kind, purpose) in expected.items():
        assert kind in rows[name] and purpose in rows[name], rows[name]
    assert "3.0 MiB" in rows["debs/"] and "2.0 MiB" in rows["frozen_features/"]
    assert out.splitlines()[0].startswith(f"cache root: {full_cache} (")
    assert "by kind:" in out.splitlines()[-1]


def test_clean_removes_intermediates_by_default_and_all_with_all(full_cache: Path,
                                                                 capsys) -> None:
    assert cache_cli.main(["--cache-dir", str(full_cache), "clean", "--dry-run"]) == 0
    assert "would remove debs/" in capsys.readouterr().out
    assert (full_cache / "debs").exists()
    assert cache_cli.main(["--cache-dir", str(full_cache), "clean"]) == 0
    left = sorted(p.name for p in full_cache.iterdir())
    assert left == sorted(["icons-32", "icons-32.lock", "frozen_features", "text_embeddings",
                           "verified", "my-notes.txt", INTERMEDIATE_LOCK])
    assert cache_cli.main(["--cache-dir", str(full_cache), "clean", "--all"]) == 0
    assert sorted(p.name for p in full_cache.iterdir()) == sorted(
        ["icons-32.lock", "my-notes.txt", INTERMEDIATE_LOCK])


def test_clean_older_than_respects_ages(full_cache: Path) -> None:
    now = time.time()
    old = now - 40 * 86400
    for path in (full_cache / "debs", full_cache / "debs" / "x_1.0_all.deb",
                 full_cache / "frozen_features",
                 *(full_cache / "frozen_features").iterdir()):
        os.utime(path, (old, old))
    actions = cache_cli.clean(full_cache, everything=True, older_than=cache_cli.parse_age("30d"),
                              now=now)
    assert sorted(a.entry.path.name for a in actions if a.removed) == ["debs", "frozen_features"]
    assert (full_cache / "icon-themes").exists() and (full_cache / "icons-32").exists()
    assert cache_cli.parse_age("12h") == 12 * 3600 and cache_cli.parse_age("2w") == 14 * 86400
    with pytest.raises(cache_cli.CacheUsageError, match="30d"):
        cache_cli.parse_age("thirty days")


def test_clean_never_removes_what_a_running_build_holds(full_cache: Path) -> None:
    with open(full_cache / "icons-32.lock", "a") as fh, embedded.using_intermediates(full_cache):
        fcntl.flock(fh, fcntl.LOCK_EX)  # icons-32 is being built
        actions = cache_cli.clean(full_cache, everything=True)
        listed = {e.path.name: e.purpose for e in cache_cli.list_entries(full_cache)}
    kept = {a.entry.path.name: a.reason for a in actions if not a.removed}
    assert "being built" in kept["icons-32"] and "in use by a running build" in kept["debs"]
    assert (full_cache / "icons-32").exists() and (full_cache / "icon-themes").exists()
    assert not (full_cache / "frozen_features").exists()  # not protected by any lock
    assert "HELD NOW" in listed["icons-32.lock"]
