"""``parscale convert``: checkpoint conversion (consolidate, dense to ParScale, reshard, HF)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import unavailable


def _run(args: argparse.Namespace) -> int:
    raise unavailable("checkpoint conversion", 6)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert checkpoints (consolidate, to-parscale, reshard, HF import/export)",
        description="Checkpoint tools: consolidate ZeRO/TP shards into a portable safetensors checkpoint, "
                    "add ParScale streams to a dense model, reshard TP, import/export Hugging Face layouts.",
    )
    parser.set_defaults(func=_run)
