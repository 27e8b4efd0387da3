"""``parscale generate``: sample text from a checkpoint (dense or ParScale, KV-cached)."""

from __future__ import annotations

import argparse

from .common import unavailable


def _run(args: argparse.Namespace) -> int:
    raise unavailable("generation", 4)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text from a checkpoint",
        description="Incremental decoding with a KV cache (ParScale prefixes pre-seed P caches per sequence).",
    )
    parser.add_argument("checkpoint", help="portable checkpoint directory")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    parser.set_defaults(func=_run)
