"""Command line: ``python -m dml_study.search OUT --index FILE --query IMG_OR_DIR [-k 5]``.

The top-k neighbours of query images among the images of an embeddings file written by
``python -m dml_study.embed`` (``--index``), with the evaluation's exact cosine kNN. Queries
are image files or directories (embedded with the export ``OUT``; images already in the
index use their stored embedding and are left out of their own results), or another
embeddings file. Prints the first queries' neighbours, writes ``OUT_DIR/neighbours.csv``
(every query) and ``OUT_DIR/gallery.html`` (self-contained thumbnails, right/wrong marked
when the query's folder names an index class) and, for labelled queries, R@1. Details:
:mod:`dml_study.export.gallery`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dml_study.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="export directory (python -m dml_study.export)")
    parser.add_argument("--index", required=True, help="embeddings file to search in")
    parser.add_argument("--query", required=True, nargs="+", metavar="PATH",
                        help="query images, directories, or one embeddings .npz file")
    parser.add_argument("-k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--out-dir", default="search_results",
                        help="where neighbours.csv and gallery.html go (default search_results)")
    parser.add_argument("--show", type=int, default=10, help="queries printed (default 10)")
    parser.add_argument("--gallery-queries", type=int, default=24,
                        help="queries shown in gallery.html (default 24; the CSV has all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dml_study.export.gallery import (
        queries_from_paths,
        search_index,
        text_table,
        write_outputs,
    )
    from dml_study.export.images import list_images, read_embeddings
    from dml_study.models.exported import read_export

    export = read_export(args.export)
    index = read_embeddings(args.index)
    index.check_model(export.model_sha256, f"index {args.index}")
    if len(args.query) == 1 and Path(args.query[0]).suffix == ".npz":
        queries = read_embeddings(args.query[0])
        queries.check_model(export.model_sha256, f"queries {args.query[0]}")
    else:
        queries = queries_from_paths(index, export.path, list_images(args.query),
                                     progress=not args.quiet)
    result = search_index(index, queries, args.k)
    print(text_table(result, args.show))
    title = f"{export.manifest['name']}: top-{result.k} neighbours"
    paths = write_outputs(result, args.out_dir, title, args.gallery_queries)
    r1, n = result.recall_at_1()
    if r1 is not None:
        print(f"R@1 over {n} labelled queries: {r1:.6f}")
    print(f"wrote {paths['csv']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
