"""The two-stage design of issue 28, item 9: stage 2 the same fraction of stage 1 at every size, and
no claim about where the P ordering appears without two seeds of every P there (made-up rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.scaling.budget import budget_lines, claimable, finding, point, resolved, stage2_seeds
from pipeline.scaling.experiment import ScalingExperiment
from pipeline.scaling.law import KInterval, LawFit
from pipeline.scaling.report import _fit_finding, _memory_finding, _stage2_budget, paired_comparisons

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
STREAMS = [1, 2, 4, 8]


def _curve(by_point: list[list[list[float]]]) -> dict:
    """A budget curve at 100 non-embedding parameters and 1000 stage-1 tokens, one point per 100 tokens."""
    rows = [point(100 * (i + 1), 100, 1000, by_p) for i, by_p in enumerate(by_point)]
    return {"size": "l", "params": 100, "stage1_tokens": 1000, "streams": STREAMS, "rows": rows, "largest_tried": 0}


UNORDERED = [[3.0], [2.9], [2.8], [2.85]]
ORDERED = [[3.0], [2.9], [2.8], [2.7]]


def test_one_seed_never_says_where_the_ordering_appears():
    curve = _curve([UNORDERED, ORDERED, ORDERED])
    assert curve["rows"][1]["ordered"] and not claimable(curve["rows"][1])
    text = finding(curve)
    assert "not claimed: one seed" in text and "appears at" not in text and "P = 1, 2, 4, 8" in text
    assert "not claimed: one seed" in budget_lines(curve)[-1]


def test_two_seeds_of_every_p_let_the_report_say_where_it_appears():
    two = [[3.0, 3.02], [2.9, 2.91], [2.8, 2.82], [2.7, 2.71]]
    curve = _curve([[[3.0, 3.0], [2.9, 2.9], [2.8, 2.8], [2.85, 2.85]], two, two])
    row = curve["rows"][1]
    assert row["seeds"] == [2, 2, 2, 2] and row["losses"] == pytest.approx([3.01, 2.905, 2.81, 2.705])
    assert row["seed_range"] == pytest.approx([0.02, 0.01, 0.02, 0.01]) and claimable(row)
    text = finding(curve)
    assert "appears at 0.200 of stage 1, 2.000 stage-2 tokens per parameter" in text
    assert "largest seed range 0.0200" in text


def test_ordered_means_with_steps_inside_the_seed_range_are_not_established():
    """The committed run's case: P = 4 and 8 0.0004 apart in the means, seeds 0.005 apart."""
    noisy = [[3.2312, 3.2297], [3.2090, 3.2035], [3.2050, 3.2027], [3.2044, 3.2025]]
    curve = _curve([noisy, noisy])
    assert curve["rows"][0]["ordered"] and claimable(curve["rows"][0]) and not resolved(curve["rows"][0])
    text = finding(curve)
    assert "not established" in text and "appears at" not in text and "+0.0004" in text and "0.0055" in text


def test_a_second_seed_at_p1_and_p_max_only_is_not_enough():
    """Every P at the point needs two seeds: the ordering involves P = 2 and 4 too."""
    partial = [[3.0, 3.01], [2.9], [2.8], [2.7, 2.72]]
    curve = _curve([partial, partial])
    assert curve["rows"][0]["seeds"] == [2, 1, 1, 2]
    assert "not claimed: one seed (P = 2, 4 at the largest size" in finding(curve)


def test_a_curve_that_never_settles_on_one_seed_says_so():
    curve = _curve([ORDERED, UNORDERED])
    assert "does not settle" in finding(curve) and "one seed of some P" in finding(curve)


def _experiment(tmp_path, **scaling) -> ScalingExperiment:
    cfg = {
        "run": {"name": "design", "output_dir": str(tmp_path / "exp")},
        "data": {"output_dir": str(tmp_path / "data")},
        "model": {
            "num_layers": 1,
            "hidden_size": 16,
            "ffn_hidden_size": 32,
            "num_attention_heads": 2,
            "num_kv_heads": 1,
        },
        "train": {"tokens": 1000},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 2}, "tokens": 750},
        "scaling": {
            "mode": "two_stage",
            "sizes": [{"name": "a"}, {"name": "b", "hidden_size": 24, "ffn_hidden_size": 48}, {"name": "c"}],
            "streams": [1, 2, 4],
            **scaling,
        },
    }
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ScalingExperiment(load_config(path), dry_run=True)


def test_stage2_tokens_are_the_same_fraction_of_stage1_at_every_size(tmp_path):
    exp = _experiment(tmp_path)
    assert {job.cfg.stage2.tokens for job in exp.jobs.values()} == {750}
    assert {job.cfg.train.tokens for job in exp.jobs.values()} == {1000}
    assert _stage2_budget(exp) == "750 tokens (0.75 of stage 1 at every size)"


def test_a_budget_per_parameter_is_flagged_as_a_ratio_that_differs_by_size(tmp_path):
    text = _stage2_budget(_experiment(tmp_path, stage2_tokens_per_param=0.5))
    assert "as a fraction of stage 1 it differs across sizes" in text


def test_stage2_fraction_sets_the_tokens_from_stage1(tmp_path):
    exp = _experiment(tmp_path, stage2_fraction=0.5)
    assert {job.cfg.stage2.tokens for job in exp.jobs.values()} == {500}
    assert _stage2_budget(exp) == "500 tokens (0.5 of stage 1 at every size)"


def test_the_committed_two_stage_config_keeps_the_fraction_and_seeds_the_largest_size():
    exp = ScalingExperiment(load_config(CONFIGS / "scaling.yaml"), dry_run=True)
    fractions = {job.cfg.stage2.tokens / job.cfg.train.tokens for job in exp.jobs.values()}
    assert len(fractions) == 1 and exp.cfg.scaling.stage2_tokens_per_param is None
    assert exp.largest == "l" and exp.seeds == stage2_seeds(exp.cfg.scaling) >= 2


def _interval(low, high):
    closed = low is not None and high is not None
    return KInterval(low, high, 0.95, closed, f"interval [{low}, {high}]" if closed else "not identified: open")


def test_the_fit_finding_names_a_degenerate_fit_and_never_prices_p():
    rows = [{"val_loss": 3.2, "streams": 1}, {"val_loss": 3.5, "streams": 8}]
    degenerate = LawFit(E=2.8e-10, A=6.4e11, alpha=0.087, k=0.016, huber=8.3e-5, rms_log_residual=0.01)
    fixed = LawFit(E=1.0, A=1e5, alpha=0.3, k=0.39, huber=2e-4, rms_log_residual=0.01, k_fixed=True)
    fits = {"free": degenerate, "paper_k": fixed, "k_interval": _interval(0.01, 0.02)}
    text = _fit_finding(rows, fits)
    assert "degenerate" in text and "not a measure of what P is worth" in text and "worth 1.0" not in text


def test_the_fit_finding_prices_p_only_from_a_closed_interval():
    rows = [{"val_loss": 3.2, "streams": 1}, {"val_loss": 3.1, "streams": 8}]
    fit = LawFit(E=2.0, A=1e5, alpha=0.3, k=0.1, huber=1e-4, rms_log_residual=0.01)
    fixed = LawFit(E=2.0, A=1e5, alpha=0.3, k=0.39, huber=2e-4, rms_log_residual=0.01, k_fixed=True)
    closed = _fit_finding(rows, {"free": fit, "paper_k": fixed, "k_interval": _interval(0.05, 0.15)})
    assert "P=8 worth 1.21x its parameters (1.10x to 1.31x)" in closed and "interval [0.05, 0.15]" in closed
    opened = _fit_finding(rows, {"free": fit, "paper_k": fixed, "k_interval": _interval(0.05, None)})
    assert "not identified" in opened and "not a measure of what P is worth" in opened and "worth 1.2" not in opened


def test_paired_comparisons_pair_each_p_with_p1_seed_by_seed():
    rows = [
        {"size": "s", "streams": 1, "seed_losses": [3.50], "prefix_control_val_loss": 3.49},
        {"size": "s", "streams": 8, "seed_losses": [3.47], "prefix_control_val_loss": None},
        {"size": "l", "streams": 1, "seed_losses": [3.20, 3.30], "prefix_control_seed_losses": [3.18, None]},
        {"size": "l", "streams": 2, "seed_losses": [3.19, 3.28], "prefix_control_val_loss": None},
        {"size": "l", "streams": 8, "seed_losses": [3.10, 3.205], "prefix_control_val_loss": None},
    ]
    found = {(size, c.label): c for size, c in paired_comparisons(rows, margin=0.01)}
    one = found["s", "P=8 vs P=1 (dense continued)"]
    assert one.diffs == pytest.approx((-0.03,)) and one.low is None and one.verdict == "inconclusive"
    top = found["l", "P=8 vs P=1 (dense continued)"]
    assert top.diffs == pytest.approx((-0.10, -0.095)) and top.verdict == "shown"  # paired: seeds 0.1 apart cancel
    assert top.high < 0 < found["l", "P=2 vs P=1 (dense continued)"].high
    prefix = found["l", "P=8 vs P=1 + one prefix (seed 0)"]
    assert prefix.diffs == pytest.approx((3.10 - 3.18,)) and prefix.verdict == "inconclusive"
    assert len(found) == 2 + 4  # s: P=8 vs P=1 and vs one prefix; l: P=2 and P=8, each against both
    rows[2]["prefix_control_seed_losses"] = [3.18, 3.29]  # the control at both seeds: paired, with an interval
    both = {(size, c.label): c for size, c in paired_comparisons(rows, margin=0.01)}["l", "P=8 vs P=1 + one prefix"]
    assert both.diffs == pytest.approx((3.10 - 3.18, 3.205 - 3.29)) and both.low is not None


def test_the_memory_finding_gives_every_batch_size_and_names_where_parscale_is_worse():
    inference = [
        {"k": 0.39, "batch": b, "streams": p, "memory_ratio": m}
        for b, p, m in ((1, 2, 1.81), (1, 8, 1.42), (8, 2, 0.35), (8, 8, 0.29))
    ]
    (line,) = _memory_finding(inference)
    assert "batch 1: P=2 1.81x, P=8 1.42x;" in line
    assert "batch 8: P=2 0.35x, P=8 0.29x (below 1: ParScale's memory increase is the larger)" in line
