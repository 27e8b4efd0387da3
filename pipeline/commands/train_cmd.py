"""``parscale train``: stage 1 (dense) or stage 2 (ParScale) training from a job config."""

from __future__ import annotations

import argparse

from ..config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from ..distributed.parent_death import die_with_parent, launched_rank
    from ..training.train import train

    if launched_rank():  # a kill -9 of torchrun takes its ranks with it (they run in their own sessions)
        die_with_parent()
    train(load_from_args(args))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a dense (stage 1) or ParScale (stage 2) model",
        description="Train on prepared data, one process per rank: run it under a launcher (torchrun, srun, "
        "deepspeed) for TP x DP > 1, or plainly for one process. Resumes from the latest checkpoint in "
        "checkpoint.dir; SIGTERM/SIGUSR1 save and exit. Stage 2 is a config with parscale.streams > 1 "
        "and train.init_from set to a (dense) portable checkpoint; its data order reads on after the "
        "tokens_seen that checkpoint records (unless train.skip_tokens is set).",
    )
    add_config_args(parser)
    parser.set_defaults(func=_run)
