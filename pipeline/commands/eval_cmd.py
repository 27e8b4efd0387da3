"""``parscale eval``: validation loss and perplexity of a checkpoint on the held-out split."""

from __future__ import annotations

import argparse

from .common import add_config_args, load_from_args, require_sections, unavailable


def _run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    require_sections(loaded, "eval", "model")
    raise unavailable("evaluation", 5)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="validation loss / perplexity of a checkpoint",
        description="Evaluate a checkpoint on the held-out split of the prepared data named in the config.",
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the latest in checkpoint.dir)")
    parser.set_defaults(func=_run)
