"""``parscale run``: the whole pipeline from one config, stage by stage, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_args, load_from_args

# (stage, issue that chains it into `run`): each exists as its own command already, except the report.
PENDING_STAGES = [
    ("stage 1: dense training (parscale train)", 7),
    ("dense -> ParScale (parscale convert to-parscale)", 7),
    ("stage 2: ParScale training (parscale train)", 7),
    ("evaluation (parscale eval)", 7),
    ("report (Markdown + plots)", 7),
]


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..config import write_resolved
    from ..distributed.healthcheck import TOPOLOGY_NAME
    from ..distributed.launcher import TorchrunLaunch

    console = Console()
    loaded = load_from_args(args)
    loaded.require("run", "model", "train")
    cfg = loaded.config
    out = Path(cfg.run.output_dir)
    resolved = write_resolved(loaded, out)
    console.print(f"[bold]parscale run[/] {cfg.run.name}: resolved config -> {resolved}")
    prep_status = _prep(loaded, console, args.dry_run)

    nproc = cfg.parallel.tensor_parallel_size * (cfg.parallel.data_parallel_size or 1)
    launch = TorchrunLaunch(
        module="pipeline.distributed.healthcheck", args=[str(resolved), "--out", str(out)], nproc_per_node=nproc,
    )
    console.print(f"distributed bootstrap check: {nproc} processes (TP {cfg.parallel.tensor_parallel_size})")
    rc = launch.run(dry_run=args.dry_run)

    table = Table(title=f"pipeline stages for {cfg.run.name}")
    table.add_column("stage")
    table.add_column("status")
    check = "dry run" if args.dry_run else ("ok" if rc == 0 else f"FAILED (exit {rc})")
    table.add_row("config resolution", f"ok -> {resolved}")
    table.add_row("data prep (Ray tokenize + pack)", prep_status)
    table.add_row("distributed bootstrap check", f"{check} -> {out / TOPOLOGY_NAME}" if rc == 0 else check)
    for stage, issue in PENDING_STAGES:
        table.add_row(stage, f"[yellow]not chained into run yet (issue #{issue})[/]")
    console.print(table)
    console.print(
        "This build's run does config resolution, data prep and the distributed bootstrap check (TP x DP groups, "
        "a DeepSpeed ZeRO step over megatron-core TP layers). Training, conversion and evaluation exist as their "
        "own commands (see the README); chaining them into this job, with a report, is issue #7."
    )
    return rc


def _prep(loaded, console, dry_run: bool) -> str:
    """Run data prep unless its output already holds this exact job."""
    from data_prep.job import is_complete, prepare

    out = Path(loaded.config.data.output_dir)
    if is_complete(loaded.config):
        console.print(f"data prep: {out} already holds this job; skipped")
        return f"ok (already done) -> {out / 'manifest.json'}"
    if dry_run:
        return f"dry run: would prepare {out}"
    prepare(loaded)
    return f"ok -> {out / 'manifest.json'}"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the pipeline from one config (today: prep + distributed check; training chained by issue 7)",
        description="Run the pipeline's stages from one config on this machine, launching the distributed ones "
                    "under torchrun with TP x DP processes. Today it prepares the data (skipped when already done) "
                    "and runs the distributed bootstrap check; it lists the stages not chained yet.",
    )
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the launch commands instead of running them")
    parser.set_defaults(func=_run)
