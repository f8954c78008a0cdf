"""``python -m dml_study.data download``: the four benchmarks from a loopback HTTP server.

The server (127.0.0.1, threads, ``Range`` support) serves archives generated in each
benchmark's official layout (:func:`fixture_datasets.write_benchmark_archives`); the source
table is the real one with its mirrors pointed at the server and its checksums at the
fixtures', so the real extraction rules are what is tested. No test needs the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fixture_datasets as fixtures
import pytest

from dml_study.data import download, get_dataset, list_datasets
from dml_study.data.__main__ import cli
from dml_study.data.download import (
    ChecksumError,
    DownloadError,
    Mirror,
    UnknownBenchmarkError,
    download_benchmark,
    open_splits,
)

BENCHMARKS = ("cub200", "cars196", "sop", "inshop")
WRITERS = {"cub200": fixtures.write_cub_fixture, "cars196": fixtures.write_cars_fixture,
           "sop": fixtures.write_sop_fixture, "inshop": fixtures.write_inshop_fixture}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may touch the shared cache."""
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DML_DATA_ROOT", raising=False)


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None, int]] = []  # path, Range, status
        self.missing: set[str] = set()
        self.cut_once: set[str] = set()  # close the connection half-way, once
        self.ignore_range = False
        self.lock = threading.Lock()

    def served(self, path: str) -> list[tuple[str | None, int]]:
        return [(r, s) for p, r, s in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes, path: str,
               rng: str | None, cut: bool = False) -> None:
        state: _State = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.requests.append((path, rng, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self) -> None:
        state: _State = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        if path in state.missing or path not in state.files:
            self._reply(404, {}, b"not found", path, rng)
            return
        data = state.files[path]
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self._reply(416, {"Content-Range": f"bytes */{len(data)}"}, b"", path, rng)
                return
            self._reply(206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                              "Accept-Ranges": "bytes"}, data[start:], path, rng)
            return
        with state.lock:
            cut = path in state.cut_once
            state.cut_once.discard(path)
        self._reply(200, {"Accept-Ranges": "bytes"}, data, path, rng, cut=cut)


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loopback_sources(name: str, archives: dict[str, Path], base: str, state: _State,
                     wrong: str | None = None) -> dict[str, download.BenchmarkSource]:
    """The real source of ``name`` with each file served by the loopback server and pinned
    to the fixture's sha256 (``wrong``: this file's pin is a wrong one)."""
    real = download.SOURCES[name]
    files = []
    for f in real.files:
        state.files[f"/{name}/{f.name}"] = archives[f.name].read_bytes()
        sha = "0" * 64 if f.name == wrong else _sha256(archives[f.name])
        files.append(dataclasses.replace(
            f, mirrors=(Mirror(f"{base}/{name}/{f.name}?download=1", "http", True),),
            sha256=sha, md5=None, size=archives[f.name].stat().st_size))
    return {name: dataclasses.replace(real, files=tuple(files))}


@pytest.fixture
def archives(name: str, tmp_path: Path) -> dict[str, Path]:
    """The published files of benchmark ``name`` (the test's parameter), as fixtures."""
    return fixtures.write_benchmark_archives(name, tmp_path / "published")


def _expected(name: str, tmp_path: Path) -> dict[str, tuple[int, int]]:
    """Independent reference: the same fixture written directly in the official layout."""
    return open_splits(name, WRITERS[name](tmp_path / "reference"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_download_extracts_the_official_layout(name, archives, server, tmp_path: Path) -> None:
    base, state = server
    sources = loopback_sources(name, archives, base, state)
    root = tmp_path / "data"
    result = download_benchmark(name, root, sources=sources, progress=False, retries=0,
                                log=lambda m: None)
    assert not result.already_present
    assert result.splits == _expected(name, tmp_path)
    for split in result.splits:  # the registry opens it, and the images decode
        ds = get_dataset(name, split, root, progress=False)
        assert ds.load_image(0).mode == "RGB"
    downloads = root / "downloads"
    assert sorted(p.name for p in downloads.iterdir() if not p.name.startswith(".")) == \
        sorted(archives)
    assert not list(root.glob(".*.extract")) and not list(downloads.glob("*.part"))
    assert all(s == 200 for _, _, s in state.requests)
    n_requests = len(state.requests)
    again = download_benchmark(name, root, sources=sources, progress=False, log=lambda m: None)
    assert again.already_present and again.splits == result.splits
    assert len(state.requests) == n_requests  # nothing fetched again


@pytest.mark.parametrize("name", BENCHMARKS)
def test_checksum_mismatch_names_file_and_both_hashes(name, archives, server, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    base, state = server
    first = download.SOURCES[name].files[0].name
    sources = loopback_sources(name, archives, base, state, wrong=first)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        download_benchmark(name, root, sources=sources, progress=False, retries=2,
                           log=lambda m: None)
    message = str(info.value)
    assert first in message and "0" * 64 in message and _sha256(archives[first]) in message
    assert len(state.served(f"/{name}/{first}")) == 1  # a mismatch is not retried
    assert not (root / "downloads" / first).exists()  # nor kept
    assert not list((root / "downloads").glob("*.part"))
    # The command line: one line, exit code 5 (a damaged file).
    monkeypatch.setattr(download, "SOURCES", sources)
    assert cli(["download", name, "--root", str(root), "--quiet", "--retries", "0"]) == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: checksum mismatch for " + first)
    assert f"expected sha256 {'0' * 64}, got sha256 {_sha256(archives[first])}" in err


@pytest.mark.parametrize("name", BENCHMARKS)
def test_partial_download_resumes_with_a_range_request(name, archives, server, tmp_path: Path
                                                       ) -> None:
    base, state = server
    sources = loopback_sources(name, archives, base, state)
    first = sources[name].files[0].name
    data = archives[first].read_bytes()
    half = len(data) // 2
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{first}.part").write_bytes(data[:half])  # left by a killed process
    result = download_benchmark(name, tmp_path / "data", sources=sources, progress=False,
                                retries=0, log=lambda m: None)
    assert result.splits == _expected(name, tmp_path)
    assert state.served(f"/{name}/{first}") == [(f"bytes={half}-", 206)]
    assert (downloads / first).read_bytes() == data


def test_a_transfer_cut_midway_resumes_in_the_same_run(server, tmp_path: Path) -> None:
    # Big enough (~0.7 MB) that whole 64 KiB chunks arrive before the cut.
    archives = fixtures.write_benchmark_archives("cub200", tmp_path / "published",
                                                 images_per_class=30, size=64)
    base, state = server
    sources = loopback_sources("cub200", archives, base, state)
    state.cut_once.add("/cub200/CUB_200_2011.tgz")
    result = download_benchmark("cub200", tmp_path / "data", sources=sources, progress=False,
                                retries=1, log=lambda m: None)
    assert result.splits["train"] == (4 * 30, 4)
    size = archives["CUB_200_2011.tgz"].stat().st_size
    served = state.served("/cub200/CUB_200_2011.tgz")
    assert served[0] == (None, 200) and served[1][1] == 206
    start = int(served[1][0].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= size // 2 and start % (1 << 16) == 0  # pooch's retry resumed


def test_a_server_ignoring_ranges_is_downloaded_again(server, tmp_path: Path) -> None:
    archives = fixtures.write_benchmark_archives("sop", tmp_path / "published")
    base, state = server
    state.ignore_range = True
    sources = loopback_sources("sop", archives, base, state)
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "Stanford_Online_Products.zip.part").write_bytes(b"stale bytes")
    result = download_benchmark("sop", tmp_path / "data", sources=sources, progress=False,
                                retries=0, log=lambda m: None)
    assert result.splits == _expected("sop", tmp_path)
    assert state.served("/sop/Stanford_Online_Products.zip")[0][1] == 200


@pytest.mark.parametrize("name", BENCHMARKS)
def test_from_archive_verifies_and_extracts_without_any_request(name, archives, server,
                                                                tmp_path: Path) -> None:
    base, state = server
    sources = loopback_sources(name, archives, base, state)
    result = download_benchmark(name, tmp_path / "data", archives=list(archives.values()),
                                sources=sources, progress=False, log=lambda m: None)
    assert result.splits == _expected(name, tmp_path)
    assert state.requests == []
    assert all(p.exists() for p in archives.values())  # the user's files are left alone
    # A damaged copy fails with both hashes and says what to do.
    damaged = tmp_path / "damaged" / next(iter(archives))
    damaged.parent.mkdir()
    damaged.write_bytes(next(iter(archives.values())).read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=r"expected sha256 \w{64}, got sha256 \w{64}; "
                                            r"this is not the official file"):
        download_benchmark(name, tmp_path / "data2", archives=[damaged], sources=sources,
                           progress=False, log=lambda m: None)


def test_from_archive_matches_a_renamed_file_by_checksum(server, tmp_path: Path) -> None:
    archives = fixtures.write_benchmark_archives("cub200", tmp_path / "published")
    base, state = server
    sources = loopback_sources("cub200", archives, base, state)
    renamed = archives["CUB_200_2011.tgz"].rename(tmp_path / "CUB_200_2011 (1).tgz")
    result = download_benchmark("cub200", tmp_path / "data", archives=[renamed],
                                sources=sources, progress=False, log=lambda m: None)
    assert result.files["CUB_200_2011.tgz"] == renamed and state.requests == []
    with pytest.raises(DownloadError, match=r"notes.txt is none of the files of cub200"):
        download_benchmark("cub200", tmp_path / "data2", archives=[_junk(tmp_path)],
                           sources=sources, progress=False, log=lambda m: None)


def _junk(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not an archive")
    return path


def test_real_table_inshop_from_archive_has_no_checksum_and_prints_the_sha256(
        tmp_path: Path, capsys) -> None:
    """In-Shop's real source table (no published checksum): --from-archive still works,
    and the command prints the sha256 of the copy."""
    archives = fixtures.write_benchmark_archives("inshop", tmp_path / "published")
    argv = ["download", "inshop", "--root", str(tmp_path / "data"), "--quiet"]
    for path in archives.values():
        argv += ["--from-archive", str(path)]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert f"sha256 of this copy: {_sha256(archives['img.zip'])}" in out
    assert "inshop opens from" in out and "query: 12 images" in out


def test_real_table_cars196_checks_the_pinned_md5(tmp_path: Path, capsys) -> None:
    """Cars196's real table pins the published md5 sums: a fixture is refused by them."""
    archives = fixtures.write_benchmark_archives("cars196", tmp_path / "published")
    argv = ["download", "cars196", "--root", str(tmp_path / "data")]
    for path in archives.values():
        argv += ["--from-archive", str(path)]
    assert cli(argv) == 5
    err = capsys.readouterr().err
    assert "expected md5 d5c8f0aa497503f355e17dc7886c3f14, got md5" in err
    # Without archives there is no automatic source: one line naming the flags to use.
    assert cli(["download", "cars196", "--root", str(tmp_path / "data")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pytorch/vision#7545" in err
    assert "--from-archive car_ims.tgz --from-archive cars_annos.mat" in err


def test_official_failure_falls_back_to_the_google_drive_mirror(server, tmp_path: Path,
                                                                monkeypatch) -> None:
    archives = fixtures.write_benchmark_archives("sop", tmp_path / "published")
    base, state = server
    sources = loopback_sources("sop", archives, base, state)
    state.missing.add("/sop/Stanford_Online_Products.zip")  # the official source answers 404
    sop = sources["sop"].files[0]
    drive = Mirror("https://drive.google.com/uc?id=FILEID", "gdrive", False)
    sources = {"sop": dataclasses.replace(sources["sop"], files=(
        dataclasses.replace(sop, mirrors=(*sop.mirrors, drive)),))}
    calls = []

    def fake_gdown(*, id, output, quiet, resume, retries):
        calls.append((id, resume))
        Path(output).write_bytes(archives["Stanford_Online_Products.zip"].read_bytes())
        return output

    import gdown

    monkeypatch.setattr(gdown, "download", fake_gdown)
    result = download_benchmark("sop", tmp_path / "data", sources=sources, progress=False,
                                retries=0, log=lambda m: None)
    assert result.splits == _expected("sop", tmp_path)
    assert calls == [("FILEID", True)]
    assert state.served("/sop/Stanford_Online_Products.zip") == [(None, 404)]


def test_unknown_names_get_a_did_you_mean(capsys) -> None:
    assert cli(["download", "cub2000"]) == 2
    assert "unknown benchmark 'cub2000' (did you mean 'cub200'?)" in capsys.readouterr().err
    assert cli(["verify", "glyph"]) == 2
    assert "(did you mean 'glyphs'?)" in capsys.readouterr().err
    with pytest.raises(UnknownBenchmarkError, match=r"built locally.*data.icons build"):
        download_benchmark("icons")


def test_the_source_table_covers_the_benchmarks_and_says_what_is_verified() -> None:
    assert list(download.SOURCES) == list_datasets("benchmark")
    for name, source in download.SOURCES.items():
        assert source.dataset == name and source.files
        for f in source.files:
            assert f.sha256_verified is False and f.checksum_note
            assert f.mirrors[0].official  # official source first
            if f.sha256 is not None:
                assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            if f.md5 is not None:
                assert re.fullmatch(r"[0-9a-f]{32}", f.md5)
            for m in f.mirrors:
                assert m.automatic or m.note  # a by-hand source says why
    assert download.SOURCES["cars196"].files[0].mirrors[0].automatic is False
    assert download.SOURCES["inshop"].files[0].sha256 is None
    assert "sha256_verified=False" in download.describe_sources(["cub200"])


def test_an_archive_without_optional_extras_still_extracts(server, tmp_path: Path) -> None:
    """CUB's top-level attributes.txt is an extra nothing reads: its absence is no error,
    while a missing dataset folder is."""
    import tarfile

    base, state = server
    tree = fixtures.write_cub_fixture(tmp_path / "tree")
    bare = tmp_path / "bare" / "CUB_200_2011.tgz"
    bare.parent.mkdir()
    with tarfile.open(bare, "w:gz") as tar:
        tar.add(tree / "CUB_200_2011", arcname="CUB_200_2011")
    sources = loopback_sources("cub200", {"CUB_200_2011.tgz": bare}, base, state)
    result = download_benchmark("cub200", tmp_path / "data", archives=[bare], sources=sources,
                                progress=False, log=lambda m: None)
    assert result.splits == _expected("cub200", tmp_path)
    wrong = tmp_path / "wrong" / "CUB_200_2011.tgz"
    wrong.parent.mkdir()
    with tarfile.open(wrong, "w:gz") as tar:
        tar.add(tree / "CUB_200_2011" / "classes.txt", arcname="classes.txt")
    sources = loopback_sources("cub200", {"CUB_200_2011.tgz": wrong}, base, state)
    with pytest.raises(DownloadError, match=r"has no CUB_200_2011: it is not the official"):
        download_benchmark("cub200", tmp_path / "data3", archives=[wrong], sources=sources,
                           progress=False, log=lambda m: None)
