"""``parscale prep``: tokenize and pack raw corpora into training shards (Ray)."""

from __future__ import annotations

import argparse

from pipeline.config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from .prepare import prepare

    prepare(load_from_args(args))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="tokenize and pack a corpus into training shards",
        description="Read the config's data sources, train a sentencepiece tokenizer or load one "
        "(a .model, a Hugging Face tokenizer.json or model folder), tokenize on "
        "Ray (local, or the cluster at data.ray_address), pack into seq_len+1 sequences, and write "
        "megatron-core .bin/.idx shards with a manifest. Rerunning resumes an interrupted job.",
    )
    add_config_args(parser)
    parser.set_defaults(func=_run)
