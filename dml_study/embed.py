"""Command line: ``python -m dml_study.embed OUT --images DIR [DIR|IMAGE ...] [--out FILE]``.

Embeds images with an export (``python -m dml_study.export``), using the run's own
evaluation preprocessing, and writes ``FILE`` (default ``embeddings.npz``): ``embeddings``
(N, d float32), ``paths`` (absolute), ``labels`` (each image's parent folder name: the
``DIR/<class>/<image>`` layout), the model's sha256 and the export's path (see
:mod:`dml_study.export.images`). ``--dataset NAME --split SPLIT`` embeds a registered
dataset's split instead, in its own order (labels: its raw class names): embedding a run's
test split this way reproduces the run's test embeddings. A progress bar shows the batches.
"""

from __future__ import annotations

import argparse
import sys

from dml_study.errors import EXIT_USAGE, UserFacingError, run_cli


class EmbedUsageError(UserFacingError):
    exit_code = EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="export directory (python -m dml_study.export)")
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files and/or directories (walked recursively)")
    parser.add_argument("--dataset", help="a registered dataset instead of --images")
    parser.add_argument("--split", default="test", help="split of --dataset (default test)")
    parser.add_argument("--data-root", help="root of the benchmark datasets (--dataset)")
    parser.add_argument("--out", default="embeddings.npz", help="output .npz file")
    parser.add_argument("--batch-size", type=int, help="default: the run's eval_batch_size")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.images is None) == (args.dataset is None):
        raise EmbedUsageError("give --images PATH [PATH ...] or --dataset NAME (one of them)")
    from dml_study.export.images import (
        dataset_images,
        embed_images,
        list_images,
        write_embeddings,
    )

    images = (list_images(args.images) if args.images is not None
              else dataset_images(args.dataset, args.split, args.data_root))
    result = embed_images(args.export, images, batch_size=args.batch_size,
                          num_workers=args.workers, progress=not args.quiet)
    path = write_embeddings(args.out, result)
    print(f"{len(result)} embeddings ({result.embeddings.shape[1]}-d) of "
          f"{len(set(result.labels))} folder(s) written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
