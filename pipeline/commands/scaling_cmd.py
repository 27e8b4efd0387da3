"""``parscale scaling``: the parallel scaling experiment (several sizes x P = 1, 2, 4, 8, the fitted
law, inference cost) from one config, on this machine."""

from __future__ import annotations

import argparse
import time

from ..config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..scaling.experiment import ScalingExperiment
    from .run_cmd import print_outcome, stage_table

    console = Console()
    start = time.perf_counter()
    loaded = load_from_args(args)
    loaded.require("scaling", by="scaling")
    if loaded.config.scaling.mode == "from_scratch":
        from ..scaling.from_scratch import FromScratchExperiment

        exp = FromScratchExperiment(loaded, dry_run=args.dry_run)
        console.print(
            f"[bold]parscale scaling[/] {exp.cfg.run.name} (from scratch): sizes {', '.join(exp.bases)} x "
            f"P = {exp.streams}, {len(exp.runs)} training runs, outputs under {exp.root}"
        )
        report = exp.run(console)
    else:
        exp = ScalingExperiment(loaded, dry_run=args.dry_run)
        console.print(
            f"[bold]parscale scaling[/] {exp.cfg.run.name} (two-stage): sizes {', '.join(exp.jobs)} x "
            f"P = {exp.streams}, outputs under {exp.root}"
        )
        report = exp.run(console)
        for name, job in exp.jobs.items():
            console.print(stage_table(f"size {name}: stages", job.timings))
    print_outcome(console, args.dry_run, report, "scaling.png", start)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="the scaling experiment: sizes x P = 1, 2, 4, 8, fitted law, inference cost, report",
        description="scaling.mode from_scratch (default): sizes of one depth and growing width (scaling.sizes, "
        "3x or more apart in backbone N), every P and the controls (dense matched to a ParScale model's "
        "parameters, dense at 1 + 0.39 ln P, one learned prefix) trained from initialisation on the same "
        "scaling.tokens with one annealed schedule, scaling.seeds paired seeds of each, evaluation on the same "
        "batches, each comparison as a paired difference with a 95% interval and a verdict, the law fitted "
        "on the backbone's N with k's profile interval (three sizes or more; one size: the comparisons alone). "
        "scaling.mode two_stage: for each size: data prep (shared), stage 1 dense, "
        "consolidate, dense-to-ParScale and stage 2 at every P > 1 plus the dense model continued for "
        "the same tokens (P = 1), evaluation on the same batches. Then fit L = E + (A / (N (k ln P + "
        "1)))^alpha (Huber on log L), measure decoding memory and latency against dense models of equal "
        "predicted loss, and write report/scaling.md with plots under run.output_dir. Finished stages "
        "are skipped on a rerun.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print each stage's launch command instead of running it"
    )
    parser.set_defaults(func=_run)
