"""Command line: ``python -m dml_study.train --dataset icons --so_lambda 0.1 ...``.

Every config key is an option, flat (``--lr``, ``--batch_size``, ``--loss``) or dotted
(``--optim.lr``); values use YAML syntax (``--eval.ks "[1,2,4]"``, ``--pretrained false``,
``--embedding_dim none``). ``--config FILE`` reads a YAML file in the preset layout first.
Runs unchanged under ``torchrun --nproc_per_node=N -m dml_study.train ...`` (DDP; gloo on CPU,
NCCL on CUDA). Prints the final metrics as JSON on rank 0.

A fault prints one line, ``error: <cause, file and fix>``, and exits with the code of
:mod:`dml_study.errors` (``--debug`` or ``DML_STUDY_DEBUG=1`` adds the traceback):

====  ======================================================================================
0     finished (the metrics are printed as JSON)
1     training error: finished run without ``--overwrite true``, non-finite loss, a config
      that differs from the checkpoint's, ...
2     bad option or config value (also: the test split asked for under the test-split
      guard, ``DML_STUDY_FORBID_TEST=1``, docs/validation.md)
3     data: the dataset is missing (``python -m dml_study.data download NAME --root DIR``)
      or an image cannot be decoded (``--on_corrupt skip``)
4     disk full: "needs ~N MB, M MB free on MOUNT; free space and re-run ...: it resumes
      from step S"
5     no good checkpoint: ``last.pt`` and ``prev.pt`` both damaged (``--overwrite true``)
6     the run is being trained by another live process (named: pid, host, command)
7     permission denied or read-only file system under the results directory
130   SIGINT (143: SIGTERM) after checkpointing the current step ("interrupted at step N;
      re-run the same command to resume"); a second SIGINT stops at once, no new checkpoint
====  ======================================================================================

A damaged ``last.pt`` is not an error: the run resumes from ``prev.pt`` with a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dml_study.config import ConfigError, dotted_keys, flat_keys, load_config, parse_cli_value
from dml_study.errors import UsageError, UserFacingError, run_cli, translate


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
    """Train from command-line options; faults are raised as
    :class:`~dml_study.errors.UserFacingError` (run it through :func:`cli` for one-line
    errors and exit codes)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = load_config(yaml_path=ns.config, **parse_overrides(ns))
    except ConfigError as err:
        raise UsageError(f"{err} (python -m dml_study.train --help lists the options)") \
            from err
    if ns.print_config:
        print(config.to_yaml())
        return 0
    from dml_study.training import TrainingInterrupted, train

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
    except UserFacingError:
        raise
    except Exception as exc:  # a library's exception for a fault the user can fix
        from dml_study.data.layout import resolve_data_root

        error = translate(exc, dataset=config.data.dataset,
                          data_root=resolve_data_root(config.data.data_root))
        if error is None:
            raise
        raise error from exc
    if main_rank:
        print(json.dumps({"run_dir": str(result.run_dir.path), **result.metrics,
                          "untrained": result.untrained}, indent=2))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` with one-line errors and the documented exit codes (see :func:`run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
