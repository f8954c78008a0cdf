"""``download``: fetch the four benchmarks from their sources into their official layouts.

``python -m dml_study.data download NAME --root DIR`` (:func:`download_benchmark`) gets the
files of one benchmark, checks their checksums, extracts them into the layout the readers
expect (:mod:`~dml_study.data.cub`, :mod:`~dml_study.data.cars`, :mod:`~dml_study.data.sop`,
:mod:`~dml_study.data.inshop`) and finishes by opening every split through the registry, so
a download that does not produce a readable dataset fails here and not in training.

**Sources** (:data:`SOURCES`, ``python -m dml_study.data sources`` prints it). Each file
lists its official source first and known mirrors after it; the mirrors are tried in order
when one fails. Two official sources need a person with a browser: Cars196 (the Stanford
URLs have answered 404 since 2023: tensorflow/datasets#3195 and #5053, pytorch/vision#7545)
and In-Shop (a Google Drive folder of the DeepFashion project); for them, and for any file
fetched by hand, ``--from-archive PATH`` (repeatable) verifies and extracts a local copy.

**Checksums.** Every pinned checksum comes from a public source named in
:attr:`SourceFile.checksum_note` (TensorFlow Datasets' ``url_checksums``, the md5 sums in
widely used loaders). None could be checked against the actual files from this project's
machines, which reach no dataset host, so each file says ``sha256_verified=False``. Where
only an md5 is published, the md5 is checked (and the sha256 of the file printed so it can
be pinned); where nothing is published (In-Shop), nothing is checked and the sha256 of the
copy is printed. A mismatch is a :class:`ChecksumError` naming the file and both hashes
(exit code 5, :data:`~dml_study.errors.EXIT_DAMAGED`).

**Downloads** go through :mod:`pooch` (the temporary file renamed into place only when it is
complete and verified, retries of failed transfers, FTP, extraction with
:class:`pooch.Untar`/:class:`pooch.Unzip`) and :mod:`gdown` for Google Drive. Partial downloads
resume: :class:`ResumableHTTPDownloader` for HTTP(S) (see its docstring for why pooch's own
downloader cannot) and gdown's ``resume=True`` for Google Drive. Files go to
``<root>/downloads/`` and are kept (``--remove-archives`` deletes them after a successful
extraction), so a re-extraction needs no network.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dml_study.errors import EXIT_BUSY, EXIT_DAMAGED, EXIT_DATA, EXIT_USAGE, UserFacingError
from dml_study.typed_fields import did_you_mean

from .base import DatasetLayoutError
from .layout import resolve_data_root
from .registry import dataset_info, get_dataset, is_dataset, list_datasets

Unpack = Literal["tar", "zip", "file"]
MirrorKind = Literal["http", "ftp", "gdrive", "browser"]


class DownloadError(UserFacingError):
    """A benchmark could not be fetched or extracted (exit code 3: data missing)."""

    exit_code = EXIT_DATA


class ChecksumError(UserFacingError):
    """A file's checksum differs from the pinned one (exit code 5: damaged file)."""

    exit_code = EXIT_DAMAGED

    def __init__(self, name: str, path: Path, algorithm: str, expected: str, got: str,
                 fix: str) -> None:
        self.name, self.path = name, path
        self.algorithm, self.expected, self.got = algorithm, expected, got
        super().__init__(
            f"checksum mismatch for {name} ({path}): expected {algorithm} {expected}, got "
            f"{algorithm} {got}; {fix}"
        )


class UnknownBenchmarkError(UserFacingError):
    """The name is not one of the downloadable benchmarks (exit code 2: usage)."""

    exit_code = EXIT_USAGE


class DownloadBusyError(UserFacingError):
    """Another process is downloading the same benchmark into the same folder (code 6)."""

    exit_code = EXIT_BUSY


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Mirror:
    """One place a file can be had.

    Attributes:
        url: its address (for ``gdrive``: ``https://drive.google.com/uc?id=<id>``; for
            ``browser``: the page a person starts from).
        kind: ``http``/``ftp`` (pooch), ``gdrive`` (gdown), ``browser`` (not automatic).
        official: published by the dataset's authors.
        note: where the mirror is documented, or why it cannot be used automatically.
    """

    url: str
    kind: MirrorKind
    official: bool
    note: str = ""

    @property
    def automatic(self) -> bool:
        return self.kind != "browser"

    @property
    def gdrive_id(self) -> str:
        return self.url.rsplit("id=", 1)[-1]


@dataclass(frozen=True)
class SourceFile:
    """One file of a benchmark, where to get it, its checksums and where it goes.

    Attributes:
        name: the file name as published (``--from-archive`` matches it).
        mirrors: official source first, then alternatives, tried in order.
        sha256: pinned SHA-256 (``None``: none published).
        md5: pinned MD5, checked only when there is no ``sha256``.
        size: published size in bytes (informative).
        sha256_verified: whether this project checked the pin against the real file. False
            for every file: this project's machines reach no dataset host.
        checksum_note: where the pinned checksums come from.
        unpack: ``tar`` or ``zip`` archive, or a plain ``file``.
        place: ``(path inside the archive, destination under the data root)`` pairs; for a
            plain file the source path is ``""``.
        optional: paths of ``place`` that an archive may lack (extras nothing reads).
    """

    name: str
    mirrors: tuple[Mirror, ...]
    sha256: str | None
    unpack: Unpack
    place: tuple[tuple[str, str], ...]
    md5: str | None = None
    size: int | None = None
    sha256_verified: bool = False
    checksum_note: str = ""
    optional: tuple[str, ...] = ()

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``(algorithm, hex digest)`` that is checked: sha256, else md5, else ``None``."""
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return None


@dataclass(frozen=True)
class BenchmarkSource:
    """Everything :func:`download_benchmark` needs to know about one benchmark."""

    dataset: str
    files: tuple[SourceFile, ...]
    note: str = ""


_NOT_VERIFIED = "not checked against the file from here (no dataset host is reachable)"

#: The source table: official source first, mirrors after (see the module docstring).
SOURCES: dict[str, BenchmarkSource] = {
    "cub200": BenchmarkSource("cub200", (
        SourceFile(
            "CUB_200_2011.tgz",
            (
                Mirror("https://data.caltech.edu/records/65de6-vp158/files/"
                       "CUB_200_2011.tgz?download=1", "http", True,
                       "CaltechDATA record 65de6-vp158, linked from the dataset page"),
                Mirror("https://drive.google.com/uc?id=1hbzc_P1FuxMkcabkgn9ZKinBwW683j45",
                       "gdrive", False,
                       "the copy TensorFlow Datasets downloads (url_checksums/"
                       "caltech_birds2011.txt)"),
            ),
            sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
            md5="97eceeb196236b17998738112f37df78",
            size=1_150_585_339,
            unpack="tar",
            place=(("CUB_200_2011", "CUB_200_2011"),
                   ("attributes.txt", "CUB_200_2011/attributes.txt")),
            optional=("attributes.txt",),
            checksum_note="sha256 and size: tensorflow/datasets url_checksums/"
                          "caltech_birds2011.txt (same sha256 in torchvision's prototype "
                          "cub200 dataset); md5: torchvision-style loaders; " + _NOT_VERIFIED,
        ),
    )),
    "cars196": BenchmarkSource("cars196", (
        SourceFile(
            "car_ims.tgz",
            (Mirror("http://ai.stanford.edu/~jkrause/car196/car_ims.tgz", "browser", True,
                    "dead (HTTP 404) since 2023: tensorflow/datasets#3195 and #5053, "
                    "pytorch/vision#7545"),),
            sha256=None,
            md5="d5c8f0aa497503f355e17dc7886c3f14",
            unpack="tar",
            place=(("car_ims", "cars196/car_ims"),),
            checksum_note="md5 as pinned by the Cars196 loaders of pytorch-metric-learning "
                          "< 1.0 and other torchvision-style loaders; no sha256 published "
                          "by the authors or TFDS (TFDS pins the classification files, "
                          "cars_train/cars_test, not car_ims.tgz); " + _NOT_VERIFIED,
        ),
        SourceFile(
            "cars_annos.mat",
            (Mirror("http://ai.stanford.edu/~jkrause/car196/cars_annos.mat", "browser", True,
                    "dead (HTTP 404) since 2023, see car_ims.tgz"),),
            sha256=None,
            md5="b407c6086d669747186bd1d764ff9dbc",
            unpack="file",
            place=(("", "cars196/cars_annos.mat"),),
            checksum_note="md5 as pinned by the same loaders as car_ims.tgz; " + _NOT_VERIFIED,
        ),
    ), note="Kaggle copies (e.g. jessicali9530/stanford-cars-dataset, suggested in "
            "tensorflow/datasets#4932) ship the classification split (cars_train/, "
            "cars_test/, devkit), not car_ims.tgz + cars_annos.mat: they are another layout "
            "and are not read by dml_study.data.cars."),
    "sop": BenchmarkSource("sop", (
        SourceFile(
            "Stanford_Online_Products.zip",
            (
                Mirror("ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip", "ftp",
                       True, "the authors' FTP link (cvgl.stanford.edu/projects/"
                             "lifted_struct); FTP downloads do not resume"),
                Mirror("https://drive.google.com/uc?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8",
                       "gdrive", False,
                       "Google Drive copy linked from the authors' repository "
                       "rksltnl/Deep-Metric-Learning-CVPR16 (also used by "
                       "pytorch-metric-learning 2.8)"),
            ),
            sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
            md5="7f73d41a2f44250d4779881525aea32e",
            size=3_083_860_082,
            unpack="zip",
            place=(("Stanford_Online_Products", "Stanford_Online_Products"),),
            checksum_note="sha256 and size: tensorflow/datasets url_checksums/"
                          "stanford_online_products.txt; md5: torchvision-style loaders; "
                          + _NOT_VERIFIED,
        ),
    )),
    "inshop": BenchmarkSource("inshop", (
        SourceFile(
            "img.zip",
            (Mirror("https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
                    "browser", True,
                    "DeepFashion's Google Drive folder (In-shop Clothes Retrieval Benchmark/"
                    "Img/img.zip), linked from the project page; Drive folders need a "
                    "browser"),),
            sha256=None,
            unpack="zip",
            place=(("img", "Inshop_Clothes/Img/img"),),
            checksum_note="no checksum is published for the DeepFashion files; the sha256 "
                          "of your copy is printed",
        ),
        SourceFile(
            "list_eval_partition.txt",
            (Mirror("https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
                    "browser", True, "same Drive folder: Eval/list_eval_partition.txt"),),
            sha256=None,
            unpack="file",
            place=(("", "Inshop_Clothes/Eval/list_eval_partition.txt"),),
            checksum_note="no checksum is published; the sha256 of your copy is printed",
        ),
    ), note="img.zip holds the low-resolution images the In-Shop benchmark is evaluated on "
            "(img_highres.zip is another, password-protected file)."),
}


# --------------------------------------------------------------------------- checksums


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of ``path`` (pooch's hashing, read in chunks)."""
    import pooch

    return pooch.file_hash(str(path), alg=algorithm)


def check_checksum(path: Path, source: SourceFile, fix: str,
                   log: Callable[[str], None] = print) -> str:
    """Check ``path`` against the pinned checksum of ``source``; the sha256 of the file.

    Raises :class:`ChecksumError` (naming the file and both hashes, then ``fix``) on a
    mismatch. Without a pinned sha256 the file's sha256 is logged so that it can be pinned.
    """
    pinned = source.checksum
    got = file_hash(path, pinned[0]) if pinned is not None else None
    if pinned is not None and got is not None and got.lower() != pinned[1].lower():
        raise ChecksumError(source.name, path, pinned[0], pinned[1], got, fix)
    if pinned is not None and pinned[0] == "sha256" and got is not None:
        return got
    sha256 = file_hash(path, "sha256")
    if pinned is None:
        log(f"  {source.name}: no published checksum to check; sha256 of this copy: {sha256}")
    else:
        log(f"  {source.name}: {pinned[0]} matches the pinned one; sha256 of this copy: "
            f"{sha256}")
    return sha256


# --------------------------------------------------------------------------- downloaders


class ResumableHTTPDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes over HTTP.

    Why not :class:`pooch.HTTPDownloader`: pooch 1.9 streams every download into a fresh
    temporary file (``pooch.utils.temporary_file``) that it deletes when the transfer fails,
    and sends no ``Range`` header, so an interrupted 3 GB download starts again from byte 0.
    This downloader streams into a persistent ``<file>.part`` next to the target instead and,
    when one exists, asks for the rest with ``Range: bytes=<size>-``: a ``206`` reply is
    appended, a ``200`` (a server ignoring ranges) rewrites the file, a ``416`` whose
    ``Content-Range`` total equals the partial's size means the partial is already complete.
    The finished partial is renamed onto pooch's temporary file, so pooch still owns the
    "complete and verified, then renamed into place" step (and its retries, which resume).
    """

    def __init__(self, partial: Path, progress: bool = True,
                 timeout: tuple[float, float] = (30.0, 120.0), chunk_size: int = 1 << 16):
        self.partial = Path(partial)
        self.progress = progress
        self.timeout = timeout
        self.chunk_size = chunk_size

    def __call__(self, url: str, output_file: str, pooch: Any, check_only: bool = False
                 ) -> bool | None:
        import requests
        from tqdm.auto import tqdm

        if check_only:
            response = requests.head(url, timeout=self.timeout, allow_redirects=True)
            return response.status_code == 200
        offset = self.partial.stat().st_size if self.partial.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416 and offset and _range_total(response) == offset:
                pass  # the partial already holds the whole file
            else:
                response.raise_for_status()
                if offset and response.status_code != 206:
                    offset = 0  # the server ignored the range: start again
                length = int(response.headers.get("Content-Length", 0)) or None
                total = offset + length if length is not None else None
                self.partial.parent.mkdir(parents=True, exist_ok=True)
                with open(self.partial, "ab" if offset else "wb") as fh, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True,
                    desc=self.partial.name.removesuffix(".part"), disable=not self.progress,
                ) as bar:
                    for chunk in response.iter_content(chunk_size=self.chunk_size):
                        fh.write(chunk)
                        bar.update(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
        os.replace(self.partial, output_file)
        return None


def _range_total(response: Any) -> int | None:
    """The total size in a ``Content-Range: bytes */<total>`` header, if any."""
    value = response.headers.get("Content-Range", "")
    tail = value.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


class GoogleDriveDownloader:
    """A pooch downloader for a Google Drive file, through :func:`gdown.download`.

    gdown resumes from its own partial file (``resume=True``), which is kept in
    ``partial_dir`` (stable across runs, unlike pooch's temporary file); the finished file is
    renamed onto pooch's temporary file.
    """

    def __init__(self, file_id: str, target: Path, progress: bool = True, retries: int = 2):
        self.file_id = file_id
        self.target = Path(target)
        self.progress = progress
        self.retries = retries

    def __call__(self, url: str, output_file: str, pooch: Any) -> None:
        import gdown

        self.target.parent.mkdir(parents=True, exist_ok=True)
        gdown.download(id=self.file_id, output=str(self.target), quiet=not self.progress,
                       resume=True, retries=self.retries)
        os.replace(self.target, output_file)


class _Verified:
    """Wraps a downloader: the finished file must match the pinned checksum before pooch
    renames it into place (a mismatch raises :class:`ChecksumError`, which pooch does not
    retry, and pooch deletes its temporary file)."""

    def __init__(self, inner: Callable[..., Any], source: SourceFile, url: str,
                 log: Callable[[str], None]):
        self.inner, self.source, self.url, self.log = inner, source, url, log
        self.sha256: str | None = None

    def __call__(self, url: str, output_file: str, pooch: Any) -> None:
        self.inner(url, output_file, pooch)
        self.sha256 = check_checksum(
            Path(output_file), self.source,
            f"downloaded from {self.url}; the download was deleted: re-run to fetch it again "
            f"(if the mismatch persists the source changed its file: fetch it by hand and "
            f"compare)", self.log)


def _downloader_for(mirror: Mirror, source: SourceFile, download_dir: Path, progress: bool,
                    retries: int) -> Callable[..., Any]:
    import pooch

    if mirror.kind == "http":
        return ResumableHTTPDownloader(download_dir / f"{source.name}.part", progress)
    if mirror.kind == "ftp":
        return pooch.FTPDownloader(progressbar=progress)
    if mirror.kind == "gdrive":
        return GoogleDriveDownloader(mirror.gdrive_id, download_dir / ".gdrive" / source.name,
                                     progress, retries)
    raise ValueError(f"{mirror.url} needs a browser")


def fetch_file(
    source: SourceFile,
    download_dir: Path,
    *,
    progress: bool = True,
    retries: int = 2,
    log: Callable[[str], None] = print,
) -> Path:
    """``<download_dir>/<name>``, verified: kept from an earlier run, else downloaded from
    the first of ``source.mirrors`` that works. Raises :class:`DownloadError` naming every
    source tried (and the manual ones) when none works."""
    import pooch

    target = download_dir / source.name
    if target.exists():
        try:
            check_checksum(target, source, "", log)
            log(f"  {source.name}: already downloaded ({target})")
            return target
        except ChecksumError as err:
            log(f"  {source.name}: the kept copy does not verify ({err.got}); fetching again")
            target.unlink()
    pooch.get_logger().setLevel("WARNING")
    failures: list[str] = []
    for mirror in source.mirrors:
        if not mirror.automatic:
            continue
        log(f"  {source.name}: fetching {mirror.url}")
        store = pooch.create(path=download_dir, base_url="", registry={source.name: None},
                             urls={source.name: mirror.url}, retry_if_failed=retries)
        downloader = _Verified(_downloader_for(mirror, source, download_dir, progress, retries),
                               source, mirror.url, log)
        try:
            return Path(store.fetch(source.name, downloader=downloader))
        except ChecksumError:
            raise
        except Exception as err:  # network, HTTP status, FTP, Google Drive quota ...
            failures.append(f"{mirror.url}: {type(err).__name__}: {' '.join(str(err).split())}")
            log(f"  {source.name}: {failures[-1]}")
    manual = [m for m in source.mirrors if not m.automatic]
    tried = f"tried {'; '.join(failures)}. " if failures else "no automatic source. "
    by_hand = "".join(f" {m.url} ({m.note})." for m in manual)
    raise DownloadError(
        f"cannot download {source.name}: {tried}Get it by hand{':' if by_hand else '.'}"
        f"{by_hand} Then pass it with --from-archive PATH"
    )


# --------------------------------------------------------------------------- extraction


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def extract_into(root: Path, name: str, files: Mapping[str, Path],
                 sources: Sequence[SourceFile], log: Callable[[str], None] = print) -> None:
    """Extract every file into ``<root>/.<name>.extract/`` (pooch's Untar/Unzip) and move
    what :attr:`SourceFile.place` names into the official layout under ``root``.

    A destination that exists is replaced (an incomplete earlier extraction, or
    ``--force``). The staging folder is on the same file system as the destinations, so the
    moves are renames: a destination is either the old or the complete new tree.
    """
    import pooch

    staging = root / f".{name}.extract"
    _remove(staging)
    staging.mkdir(parents=True)
    try:
        for source in sources:
            archive = files[source.name]
            unpacked = staging / source.name
            if source.unpack == "file":
                unpacked.mkdir()
                shutil.copy2(archive, unpacked / source.name)
            else:
                log(f"  {source.name}: extracting")
                processor = (pooch.Untar if source.unpack == "tar" else pooch.Unzip)(
                    extract_dir=str(unpacked))
                processor(str(archive), "download", None)
            for inside, dest in source.place:
                src = unpacked / (inside or source.name)
                if not src.exists() and inside in source.optional:
                    continue
                if not src.exists():
                    raise DownloadError(
                        f"{archive} has no {inside or source.name}: it is not the official "
                        f"{source.name} (expected layout: {dataset_info(name).layout})"
                    )
                target = root / dest
                if target.exists():
                    log(f"  replacing {target}")
                    _remove(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, target)
    finally:
        _remove(staging)


# --------------------------------------------------------------------------- the command


@dataclass
class DownloadResult:
    """What :func:`download_benchmark` did.

    Attributes:
        dataset: registry name.
        root: the data root the dataset now opens from.
        files: the verified file used for each source file (``None`` when nothing was
            fetched because the dataset was already in place).
        splits: ``(images, classes)`` per split, as the registry opens them.
        already_present: the dataset opened before anything was done (no ``--force``).
    """

    dataset: str
    root: Path
    files: dict[str, Path | None] = field(default_factory=dict)
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    already_present: bool = False


def benchmark_source(name: str, sources: Mapping[str, BenchmarkSource] | None = None
                     ) -> BenchmarkSource:
    """The source of benchmark ``name``; unknown names raise with a did-you-mean."""
    table = SOURCES if sources is None else sources
    if name in table:
        return table[name]
    if is_dataset(name) and dataset_info(name).kind == "embedded":
        raise UnknownBenchmarkError(
            f"{name} is an embedded dataset, built locally rather than downloaded: run "
            f"`python -m dml_study.data.{dataset_info(name).embedded} build`")
    names = list_datasets("benchmark")
    raise UnknownBenchmarkError(
        f"unknown benchmark {name!r}{did_you_mean(name, names)}; downloadable: "
        f"{', '.join(names)}")


def open_splits(name: str, root: Path) -> dict[str, tuple[int, int]]:
    """``(images, classes)`` of every split of ``name`` under ``root``, through the registry
    (raises the readers' :class:`DatasetLayoutError` when the layout is not complete)."""
    out = {}
    for split in dataset_info(name).splits:
        ds = get_dataset(name, split, root, progress=False)
        out[split] = (len(ds), len(set(ds.labels.tolist())))
    return out


def match_archives(source: BenchmarkSource, archives: Sequence[str | os.PathLike[str]]
                   ) -> dict[str, Path]:
    """``{source file name: local path}`` for ``--from-archive`` paths: by file name, else
    (a renamed download) by pinned checksum. Unmatched or missing paths raise."""
    by_name = {f.name: f for f in source.files}
    out: dict[str, Path] = {}
    for raw in archives:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise DownloadError(f"--from-archive {path}: no such file")
        match = by_name.get(path.name)
        if match is None:
            for f in source.files:
                if f.checksum is not None and file_hash(path, f.checksum[0]) == f.checksum[1]:
                    match = f
                    break
        if match is None:
            raise DownloadError(
                f"--from-archive {path} is none of the files of {source.dataset} "
                f"({', '.join(by_name)}){did_you_mean(path.name, by_name)}: rename it to the "
                f"published name")
        out[match.name] = path
    return out


@contextlib.contextmanager
def _download_lock(download_dir: Path, name: str) -> Iterator[None]:
    download_dir.mkdir(parents=True, exist_ok=True)
    with open(download_dir / f".{name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadBusyError(
                f"another process is downloading {name} into {download_dir}: wait for it "
                f"to finish (its lock: {download_dir / f'.{name}.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download_benchmark(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    archives: Sequence[str | os.PathLike[str]] = (),
    download_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    remove_archives: bool = False,
    retries: int = 2,
    progress: bool = True,
    sources: Mapping[str, BenchmarkSource] | None = None,
    log: Callable[[str], None] = print,
) -> DownloadResult:
    """Fetch, verify and extract benchmark ``name`` into ``root`` in its official layout.

    Args:
        root: the data root (default ``$DML_DATA_ROOT`` or ``./data``).
        archives: local copies of source files (``--from-archive``), verified like
            downloads and used instead of fetching them.
        download_dir: where downloads (and partial downloads) are kept (default
            ``<root>/downloads``).
        force: extract again even when the dataset already opens.
        remove_archives: delete the downloaded files after a successful extraction (local
            ``archives`` are never deleted).
        retries: extra attempts per source (pooch's ``retry_if_failed``; they resume).
        sources: the source table (default :data:`SOURCES`; tests point it at a loopback
            server).

    Returns:
        A :class:`DownloadResult`. Raises :class:`UnknownBenchmarkError`,
        :class:`ChecksumError`, :class:`DownloadError` or :class:`DownloadBusyError`.
    """
    source = benchmark_source(name, sources)
    data_root = resolve_data_root(root)
    given = match_archives(source, archives)
    result = DownloadResult(name, data_root)
    if not force:
        with contextlib.suppress(DatasetLayoutError):
            result.splits = open_splits(name, data_root)
            result.already_present = True
            log(f"{name}: already in place under {data_root} (--force extracts it again)")
            return result
    where = Path(download_dir).expanduser() if download_dir else data_root / "downloads"
    by_hand = [f for f in source.files if f.name not in given and not (where / f.name).exists()
               and not any(m.automatic for m in f.mirrors)]
    if by_hand:
        flags = " ".join(f"--from-archive {f.name}" for f in source.files if f.name not in given)
        why = "; ".join(f"{f.name}: {m.url} ({m.note})" for f in by_hand for m in f.mirrors)
        raise DownloadError(
            f"{name}: {', '.join(f.name for f in by_hand)} cannot be downloaded automatically "
            f"({why}). Fetch them by hand, then run: python -m dml_study.data download {name} "
            f"--root {data_root} {flags}")
    with _download_lock(where, name):
        for f in source.files:
            if f.name in given:
                log(f"  {f.name}: checking {given[f.name]}")
                check_checksum(given[f.name], f, "this is not the official file, or it is "
                               "damaged: fetch it again", log)
                result.files[f.name] = given[f.name]
            else:
                result.files[f.name] = fetch_file(f, where, progress=progress,
                                                  retries=retries, log=log)
        files = {k: v for k, v in result.files.items() if v is not None}
        extract_into(data_root, name, files, source.files, log)
    try:
        result.splits = open_splits(name, data_root)
    except DatasetLayoutError as err:
        raise DownloadError(f"{name} was extracted into {data_root} but does not open: "
                            f"{' '.join(str(err).split())}") from err
    if remove_archives:
        for f in source.files:
            if f.name not in given:
                (where / f.name).unlink(missing_ok=True)
    return result


def describe_sources(names: Sequence[str] | None = None,
                     sources: Mapping[str, BenchmarkSource] | None = None) -> str:
    """The source table as text (``python -m dml_study.data sources``)."""
    table = SOURCES if sources is None else sources
    lines = []
    for name in names or list(table):
        src = benchmark_source(name, table)
        lines.append(f"{name}  ({dataset_info(name).source_url})")
        for f in src.files:
            algo = f.checksum[0] if f.checksum else "none"
            digest = f.checksum[1] if f.checksum else "-"
            lines.append(f"  {f.name}: checked by {algo} {digest}; sha256_verified="
                         f"{f.sha256_verified}")
            lines.append(f"    checksum source: {f.checksum_note}")
            for m in f.mirrors:
                who = "official" if m.official else "mirror"
                auto = "automatic" if m.automatic else "by hand"
                lines.append(f"    {who}, {m.kind}, {auto}: {m.url}")
                if m.note:
                    lines.append(f"      {m.note}")
        if src.note:
            lines.append(f"  note: {src.note}")
    return "\n".join(lines)


__all__ = [
    "SOURCES",
    "BenchmarkSource",
    "ChecksumError",
    "DownloadBusyError",
    "DownloadError",
    "DownloadResult",
    "GoogleDriveDownloader",
    "Mirror",
    "ResumableHTTPDownloader",
    "SourceFile",
    "UnknownBenchmarkError",
    "benchmark_source",
    "check_checksum",
    "describe_sources",
    "download_benchmark",
    "extract_into",
    "fetch_file",
    "file_hash",
    "match_archives",
    "open_splits",
]
