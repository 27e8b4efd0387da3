"""Pieces every subcommand shares: the config arguments and the errors handlers raise."""

from __future__ import annotations

import argparse

from ..config import LoadedConfig, load_config


class CommandUnavailable(RuntimeError):
    """The subcommand exists in the interface but its implementation has not landed yet."""


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?",
                        help="job config YAML (may extend others with 'base:')")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any key by dotted path, value read as YAML; repeatable "
             "(e.g. --set model.hidden_size=512 --set data.sources[0].weight=2)",
    )


def load_from_args(args: argparse.Namespace) -> LoadedConfig:
    return load_config(args.config, args.overrides)


def require_sections(loaded: LoadedConfig, command: str, *sections: str) -> None:
    """Refuse a config that lacks a section this command needs, naming the key."""
    for section in sections:
        if getattr(loaded.config, section) is None:
            raise loaded.error(section, f"required by '{command}' but missing")


def unavailable(what: str, issue: int) -> CommandUnavailable:
    return CommandUnavailable(f"{what} has not landed yet (issue #{issue}); the config was validated")
