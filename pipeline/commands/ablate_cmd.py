"""``parscale ablate``: stage-2 variants (``ablation.variants``) against the main job's own stage 2,
on the same stage 1, with the stream diagnostics and a report."""

from __future__ import annotations

import argparse
import time

from ..config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..scaling.ablation import Stage2Ablation

    console = Console()
    start = time.perf_counter()
    loaded = load_from_args(args)
    ablation = Stage2Ablation(loaded, dry_run=args.dry_run)
    cfg = ablation.cfg
    console.print(
        f"[bold]parscale ablate[/] {cfg.run.name}: stage 2 at P = {cfg.stage2.parscale.streams}, baseline + "
        f"{len(cfg.ablation.variants)} variants x {cfg.ablation.seeds} seeds, outputs under {ablation.root}"
    )
    report = ablation.run(console)
    if args.dry_run:
        console.print("dry run: nothing was trained or written")
    else:
        console.print(f"[bold]report:[/] {report}; total {time.perf_counter() - start:.0f} s")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="stage-2 ablations: variants of stage 2 on one stage 1, with stream diagnostics",
        description="Runs the config's main job (as parscale run: prep, stage 1 dense, stage 2 at "
        "stage2.parscale.streams, the dense and one-prefix controls), then for each of "
        "ablation.variants (a few stage2.* / optimizer.* keys) stage 2 again from the same stage 1, "
        "ablation.seeds seeds each; evaluates every model on the same validation batches with the "
        "stream diagnostics (spread, merge weights, prefix and update cosines, diversity gain) and "
        "writes run.output_dir/ablation/report/ablation.md. Finished runs are skipped on a rerun.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print each stage's launch command instead of running it"
    )
    parser.set_defaults(func=_run)
