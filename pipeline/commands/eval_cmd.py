"""``parscale eval``: validation loss and perplexity of a portable checkpoint on the held-out split
of the prepared data named in the config."""

from __future__ import annotations

import argparse
import json

from ..config import RunPaths
from ..config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from ..training.evaluation import evaluate_portable

    loaded = load_from_args(args)
    checkpoint = args.checkpoint or str(RunPaths.of(loaded.config).portable)
    result = evaluate_portable(loaded, checkpoint, args.max_batches)
    print(json.dumps(result, indent=2))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="validation loss / perplexity of a checkpoint",
        description="Evaluate a portable checkpoint on the held-out split of the prepared data named in the config "
        "(data.output_dir or train.datasets); prints JSON.",
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="portable checkpoint folder (default: <run.output_dir>/portable)")
    parser.add_argument("--max-batches", type=int, help="micro-batches to evaluate (default: eval.max_batches)")
    parser.set_defaults(func=_run)
