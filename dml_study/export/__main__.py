"""Command line: ``python -m dml_study.export RUN_DIR OUT [--weights final|best] [--overwrite]``.

Exports a finished run directory (``results/runs/<run_name>/``) to ``OUT/``: the embedder
and proxies as safetensors, the run's config, ``export.json`` and a model card
(``README.md``). Fine-tuned runs export ``checkpoints/last.pt`` (``--weights final``, the
weights the run's metrics describe) or ``checkpoints/best.pt`` (``--weights best``);
frozen-tier runs export their trained head on the pretrained backbone. Prints the export's
path and its exported metrics. Errors are one line (``--debug`` shows the traceback); exit
codes as in :mod:`dml_study.errors`.
"""

from __future__ import annotations

import argparse
import sys

from dml_study.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished run directory (results/runs/<run_name>)")
    parser.add_argument("out", help="the export directory to write")
    parser.add_argument("--weights", choices=("final", "best"), default="final",
                        help="final epoch (default) or the epoch of the best test R@1")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export in OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dml_study.export.writer import export_run

    export = export_run(args.run_dir, args.out, weights=args.weights, overwrite=args.overwrite)
    exported = export.manifest["metrics"]["exported"]
    shown = " ".join(f"{k} {v:.4f}" for k, v in exported.items() if k != "epoch")
    print(f"exported {export.manifest['source']['run_name']} ({export.manifest['source']['tier']}"
          f", {args.weights} weights, epoch {exported.get('epoch')}) to {export.path}")
    print(f"  {export.manifest['metrics']['split']}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
