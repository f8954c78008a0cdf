"""Command line: ``python -m dml_study.train --dataset icons --so_lambda 0.1 ...``.

Every config key is an option, flat (``--lr``, ``--batch_size``, ``--loss``) or dotted
(``--optim.lr``); values use YAML syntax (``--eval.ks "[1,2,4]"``, ``--pretrained false``,
``--embedding_dim none``). ``--config FILE`` reads a YAML file in the preset layout first.
Runs unchanged under ``torchrun --nproc_per_node=N -m dml_study.train ...`` (DDP; gloo on CPU,
NCCL on CUDA). Prints the final metrics as JSON on rank 0.

Exit status: 0 finished; 1 training error (one line naming cause and fix: run locked by
another process, finished run without ``--overwrite true``, non-finite loss, ...);
2 bad config (also: the test split asked for under the test-split guard,
``DML_STUDY_FORBID_TEST=1``, docs/validation.md); 3 data (one line: e.g. every image that
does not decode, found before the first epoch, with the ``--on_corrupt skip`` fix; see
:mod:`dml_study.errors`); 130/143 interrupted by SIGINT/SIGTERM after checkpointing the
current step ("interrupted at step N; re-run the same command to resume"); a second SIGINT
stops at once (130, no new checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dml_study.config import ConfigError, dotted_keys, flat_keys, load_config, parse_cli_value
from dml_study.errors import UserFacingError, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dml_study.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with config sections (preset layout)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    group = parser.add_argument_group("config keys (flat or dotted; YAML values)")
    flat = flat_keys()
    for key in sorted(flat):
        group.add_argument(f"--{key}", dest=f"cfg:{flat[key]}", metavar="V", help=flat[key])
    for dotted in dotted_keys():
        group.add_argument(f"--{dotted}", dest=f"cfg:{dotted}", metavar="V",
                           help=argparse.SUPPRESS)
    return parser


def parse_overrides(ns: argparse.Namespace) -> dict[str, object]:
    """``{"section.key": typed value}`` for the options given on the command line."""
    out = {}
    for dest, raw in vars(ns).items():
        if dest.startswith("cfg:") and raw is not None:
            dotted = dest[4:]
            out[dotted] = parse_cli_value(raw, dotted)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = load_config(yaml_path=ns.config, **parse_overrides(ns))
    except ConfigError as err:
        parser.error(str(err))
    if ns.print_config:
        print(config.to_yaml())
        return 0
    from dml_study.training import TrainingError, TrainingInterrupted, train

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        result = train(config)
    except TrainingInterrupted as err:
        if main_rank:
            print(str(err), file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt as err:
        print(f"{err or 'interrupted'}; the last checkpoint (if any) is still valid: "
              "re-run the same command to resume", file=sys.stderr, flush=True)
        return 130
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except UserFacingError as err:  # e.g. the test split under the tuner's guard
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return err.exit_code
    if main_rank:
        print(json.dumps({"run_dir": str(result.run_dir.path), **result.metrics,
                          "untrained": result.untrained}, indent=2))
    return 0


if __name__ == "__main__":
    from dml_study.errors import run_cli

    sys.exit(run_cli(main))
