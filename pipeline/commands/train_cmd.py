"""``parscale train``: stage 1 (dense) or stage 2 (ParScale) training from a job config."""

from __future__ import annotations

import argparse

from .common import add_config_args, load_from_args, require_sections, unavailable


def _run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    require_sections(loaded, "train", "model", "train")
    raise unavailable("training (DeepSpeed ZeRO + megatron-core TP)", 5)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a dense (stage 1) or ParScale (stage 2) model",
        description="Train under a distributed launcher (torchrun, srun, deepspeed): one process per rank, "
                    "TP x DP from the config's parallel section. Stage 2 is a config with parscale.streams > 1 "
                    "and train.init_from set.",
    )
    add_config_args(parser)
    parser.set_defaults(func=_run)
