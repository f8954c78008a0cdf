"""Command line of the data layer: ``python -m dml_study.data download|verify|sources``.

::

    python -m dml_study.data download cub200 --root data
    python -m dml_study.data download cars196 --root data \\
        --from-archive ~/Downloads/car_ims.tgz --from-archive ~/Downloads/cars_annos.mat
    python -m dml_study.data verify cub200 --root data
    python -m dml_study.data verify icons
    python -m dml_study.data sources

``download`` (:func:`dml_study.data.download.download_benchmark`) fetches a benchmark from its
official source (or a listed mirror), checks its checksum, extracts it into the official
layout and opens every split. ``verify`` (:func:`dml_study.data.verify.verify_dataset`)
decodes every image of every split once and prints one line per unreadable file.
``sources`` prints the source table: official sources, mirrors, checksums and whether they
could be verified.

Errors are one line (``error: ...``; ``--debug`` shows the traceback) with the exit codes
of :mod:`dml_study.errors`: 2 usage (unknown dataset: a did-you-mean), 3 data (a download
that failed, a layout that does not open, unreadable images), 5 a checksum mismatch (the
message names the file, the expected and the actual hash), 6 the same download running in
another process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dml_study.errors import EXIT_DATA, EXIT_USAGE, UserFacingError, one_line, run_cli
from dml_study.typed_fields import did_you_mean

from .base import DatasetLayoutError, EmbeddedBuildError
from .layout import DATA_ROOT_ENV


class DataCommandError(UserFacingError):
    """A missing dataset or an embedded dataset that is not built (exit code 3)."""

    exit_code = EXIT_DATA


class DataUsageError(UserFacingError):
    """An unknown dataset name (exit code 2)."""

    exit_code = EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    root_help = f"data root holding the benchmark folders (default ${DATA_ROOT_ENV} or ./data)"

    d = sub.add_parser("download", help="fetch, verify and extract a benchmark")
    d.add_argument("name", help="cub200, cars196, sop or inshop")
    d.add_argument("--root", default=None, help=root_help)
    d.add_argument("--from-archive", action="append", default=[], metavar="PATH",
                   help="a file fetched by hand (repeatable): verified and extracted")
    d.add_argument("--download-dir", default=None,
                   help="where downloads and partial downloads are kept (default ROOT/downloads)")
    d.add_argument("--force", action="store_true",
                   help="extract again even when the dataset already opens")
    d.add_argument("--remove-archives", action="store_true",
                   help="delete the downloaded files after a successful extraction")
    d.add_argument("--retries", type=int, default=2, help="extra attempts per source")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("verify", help="decode every image once and list the unreadable ones")
    v.add_argument("name", help="any registered dataset (benchmarks, icons, glyphs)")
    v.add_argument("--root", default=None, help=root_help + "; ignored for icons/glyphs")
    v.add_argument("--cache-dir", default=None,
                   help="cache root for the records and the embedded datasets "
                        "(default $DML_STUDY_CACHE or ~/.cache/dml_study)")
    v.add_argument("--size", type=int, default=None,
                   help="image size of an embedded dataset (default: its default size)")
    v.add_argument("--no-records", action="store_true",
                   help="decode every file even if unchanged since it was last verified")
    v.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sources", help="print the sources, mirrors and checksums")
    s.add_argument("name", nargs="*", help="benchmarks to show (default: all)")
    return parser


def _check_name(name: str) -> None:
    from .registry import is_dataset, list_datasets

    if not is_dataset(name):
        names = list_datasets()
        raise DataUsageError(f"unknown dataset {name!r}{did_you_mean(name, names)}; valid: "
                             f"{', '.join(names)}")


def _download(args: argparse.Namespace) -> int:
    from .download import download_benchmark

    result = download_benchmark(
        args.name, args.root, archives=args.from_archive, download_dir=args.download_dir,
        force=args.force, remove_archives=args.remove_archives, retries=args.retries,
        progress=not args.quiet,
    )
    splits = ", ".join(f"{s}: {n} images, {c} classes" for s, (n, c) in result.splits.items())
    print(f"{args.name} opens from {result.root} ({splits})")
    if not result.already_present:
        print(f"next: python -m dml_study.data verify {args.name} --root {result.root}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .registry import dataset_info
    from .verify import verify_dataset

    _check_name(args.name)
    info = dataset_info(args.name)
    kw: dict[str, object] = {}
    if info.kind == "embedded":
        kw["build"] = False  # verify what is there; building is `python -m ...<name> build`
        if args.size is not None:
            kw["icon_size" if args.name == "icons" else "size"] = args.size
    report = verify_dataset(args.name, args.root, progress=not args.quiet,
                            cache_dir=args.cache_dir, records=not args.no_records, **kw)
    for bad in report.bad:
        print(f"{bad.path}: {bad.reason}")
    print(report.summary())
    if not report.ok:
        print(f"error: {one_line(report.error())}", file=sys.stderr)
        return EXIT_DATA
    return 0


def _sources(args: argparse.Namespace) -> int:
    from .download import describe_sources

    print(describe_sources(args.name or None))
    return 0


def _translate(exc: BaseException) -> UserFacingError | None:
    """The data layer's own errors, as one-line errors with the data exit code."""
    if isinstance(exc, DatasetLayoutError | EmbeddedBuildError):
        return DataCommandError(one_line(exc))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    command = {"download": _download, "verify": _verify, "sources": _sources}[args.command]
    return command(args)


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` through :func:`dml_study.errors.run_cli` (one-line errors, ``--debug``)."""
    return run_cli(main, argv, translate=_translate)


if __name__ == "__main__":
    sys.exit(cli())
