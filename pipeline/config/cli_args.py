"""The command-line arguments every config-driven subcommand takes (a config file, --set overrides)."""

from __future__ import annotations

import argparse

from .loader import LoadedConfig, load_config


def add_config_args(
    parser: argparse.ArgumentParser,
    required: bool = True,
    what: str = "job config YAML (may extend others with 'base:')",
) -> None:
    parser.add_argument("config", nargs=None if required else "?", help=what)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key by dotted path, value read as YAML; repeatable "
        "(e.g. --set model.hidden_size=512 --set data.sources[0].weight=2)",
    )


def load_from_args(args: argparse.Namespace) -> LoadedConfig:
    return load_config(args.config, args.overrides)
