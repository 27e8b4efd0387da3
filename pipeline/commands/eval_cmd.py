"""``parscale eval``: validation loss and perplexity of a portable checkpoint on the held-out split
of the prepared data named in the config; with ``--tasks``, downstream tasks of
lm-evaluation-harness on the checkpoint (a config's run, or a checkpoint folder given directly)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import RunPaths
from ..config.cli_args import add_config_args, load_from_args
from .model_args import add_attention_backend_arg, add_device_arg, chosen_device


def _checkpoint(args: argparse.Namespace) -> str:
    """The portable checkpoint to evaluate: ``--checkpoint``, the folder given in place of a config,
    or the config's run's export."""
    if args.checkpoint:
        return args.checkpoint
    if Path(args.config).is_dir():
        return args.config
    return str(RunPaths.of(load_from_args(args).config).portable)


def _loss(args: argparse.Namespace) -> int:
    from ..training.evaluation import evaluate_portable

    loaded = load_from_args(args)
    checkpoint = args.checkpoint or str(RunPaths.of(loaded.config).portable)
    result = evaluate_portable(loaded, checkpoint, args.max_batches, args.attention_backend, chosen_device(args))
    print(json.dumps(result, indent=2))
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from ..checkpoint.portable import load_tokenizer
    from ..distributed import single_process
    from ..downstream.harness_model import HarnessLM, open_scorer
    from ..downstream.run_tasks import evaluate_tasks, results_table
    from ..utils.fs import atomic_write_text

    checkpoint = _checkpoint(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    device = chosen_device(args)
    with single_process(seed=args.seed, device=device):
        scorer = open_scorer(
            checkpoint, device, args.batch_size, args.max_length, args.attention_backend, "--attention-backend"
        )
        lm = HarnessLM(scorer=scorer, tokenizer=load_tokenizer(checkpoint), max_gen_toks=args.max_gen_toks)
        results = evaluate_tasks(
            lm, tasks, num_fewshot=args.num_fewshot, limit=limit, include_path=args.include_path, seed=args.seed
        )
    print("\n".join(results_table(results)))
    output = Path(args.output) if args.output else Path(checkpoint).with_name(f"{Path(checkpoint).name}.lm_eval.json")
    atomic_write_text(output, json.dumps({"checkpoint": checkpoint, **results}, indent=2, default=str))
    print(f"results: {output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    return _tasks(args) if args.tasks else _loss(args)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="validation loss / perplexity, or downstream tasks (lm-eval), of a checkpoint",
        description="Without --tasks: evaluate a portable checkpoint on the held-out split of the prepared data "
        "named in the config (data.output_dir or train.datasets); prints JSON. With --tasks: run "
        "lm-evaluation-harness tasks on the checkpoint (CONFIG may then be the checkpoint folder itself), print "
        "lm-eval's table and write its JSON results beside the checkpoint. Task datasets are read offline (local "
        "files or the datasets cache); the project's smoke tasks are parscale_mc, parscale_ppl, parscale_gen "
        "(group parscale_smoke).",
    )
    add_config_args(
        parser,
        what="job config YAML (may extend others with 'base:'), or, with --tasks, a portable checkpoint folder",
    )
    parser.add_argument("--checkpoint", help="portable checkpoint folder (default: <run.output_dir>/portable)")
    parser.add_argument("--max-batches", type=int, help="micro-batches to evaluate (default: eval.max_batches)")
    add_attention_backend_arg(parser)
    add_device_arg(parser)
    tasks = parser.add_argument_group("downstream tasks (lm-evaluation-harness)")
    tasks.add_argument(
        "--tasks",
        help="comma-separated lm-eval task or group names, e.g. parscale_smoke or "
        "hellaswag,gsm8k (their datasets must be available locally)",
    )
    tasks.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: each task's)")
    tasks.add_argument("--limit", type=float, help="documents per task (or a fraction, if below 1)")
    tasks.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    tasks.add_argument("--max-length", type=int, help="context length (default: the trained sequence length)")
    tasks.add_argument("--max-gen-toks", type=int, default=256, help="most new tokens per generation (default 256)")
    tasks.add_argument("--include-path", action="append", default=[], help="a folder of more task YAMLs; repeatable")
    tasks.add_argument("--output", help="results JSON (default: <checkpoint>.lm_eval.json beside the checkpoint)")
    tasks.add_argument("--seed", type=int, default=1234)
    parser.set_defaults(func=_run)
