"""``parscale prep``: tokenize and pack raw corpora into training shards (Ray)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import add_config_args, load_from_args, unavailable


def _run(args: argparse.Namespace) -> int:
    load_from_args(args)
    raise unavailable("data preparation (Ray, sentencepiece, packing)", 3)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep", help="tokenize and pack a corpus into training shards",
        description="Read the config's data sources, train or load a sentencepiece tokenizer, tokenize on "
                    "Ray, pack into seq_len+1 sequences, and write .bin/.idx shards with a manifest.",
    )
    add_config_args(parser)
    parser.set_defaults(func=_run)
