"""``parscale run``: the whole pipeline from one config, stage by stage, on this machine."""

from __future__ import annotations

import argparse
import time

from ..config.cli_args import add_config_args, load_from_args


def stage_table(title: str, timings: dict[str, dict]):
    """A rich table of stage name, status and seconds."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for name, timing in timings.items():
        table.add_row(name, timing["status"], f"{timing['seconds']:.1f}")
    return table


def print_outcome(console, dry_run: bool, report, plot: str, start: float) -> None:
    if dry_run:
        console.print("dry run: nothing was trained or written")
    else:
        console.print(
            f"[bold]report:[/] {report}  (plot: {report.parent / plot}); total {time.perf_counter() - start:.0f} s"
        )


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..mainjob.stages import MainJob

    console = Console()
    start = time.perf_counter()
    job = MainJob(load_from_args(args), dry_run=args.dry_run)
    console.print(
        f"[bold]parscale run[/] {job.cfg.run.name}: {job.nproc} process(es) per training stage, "
        f"outputs under {job.folders.root}"
    )
    report = job.run(console)
    console.print(stage_table(f"{job.cfg.run.name}: stages", job.timings))
    print_outcome(console, args.dry_run, report, "loss.png", start)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the whole pipeline from one config: prep, stage 1, convert, stage 2, eval, report",
        description="Data prep -> stage 1 dense training -> consolidate -> dense-to-ParScale -> stage 2 ParScale "
        "training (and a dense control at equal tokens, stage2.dense_baseline) -> evaluation -> a "
        "Markdown report with loss plots, under run.output_dir. Training stages run under torchrun "
        "with TP x DP processes. A stage whose output is already complete is skipped, so rerunning "
        "the same command continues where it stopped.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print each stage's launch command instead of running it (stages already done are reported as skipped)",
    )
    parser.set_defaults(func=_run)
