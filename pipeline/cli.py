"""The ``parscale`` command: one entry point, a subcommand per pipeline step."""

from __future__ import annotations

import argparse
import errno
import sys
from importlib.metadata import PackageNotFoundError, version

from checkpoints_tools import cli as convert_cli
from data_prep import cli as prep_cli

from .commands import ablate_cmd, config_cmd, eval_cmd, generate_cmd, run_cmd, scaling_cmd, train_cmd
from .errors import EXIT_USER_ERROR, UserError

SUBCOMMANDS = [prep_cli, train_cmd, convert_cli, eval_cmd, generate_cmd, run_cmd, scaling_cmd, ablate_cmd, config_cmd]


def _version() -> str:
    try:
        return version("parscale-train")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parscale",
        description="Pretrain Parallel Scaling (ParScale) language models: Ray data prep, DeepSpeed ZeRO + "
        "megatron-core tensor parallelism (stage 1 dense, stage 2 ParScale), checkpoint tools.",
        epilog="Every subcommand has --help. Configs: configs/*.yaml; override any key with --set a.b=c.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:  # ConfigError included: the message names the file, line and key
        print(f"parscale {args.command}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(
            f"parscale {args.command}: no space left on device: {exc.filename or 'a file being written'}; free "
            "space and rerun the same command (finished work is kept)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
