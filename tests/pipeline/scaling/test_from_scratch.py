"""The from-scratch scaling experiment on the paper's axes: sizes vary width at one depth and span
3x in backbone N, one absolute token budget, an annealed schedule, every arm on every seed (paired:
one run.seed per seed index), the dense controls' sizes, the paired comparisons and the fit section
of the report on made-up results, and ``parscale scaling`` end to end on tiny models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from helpers.process import run_cli
from helpers.scaling import tiny_scaling_base

from pipeline.config import load_config
from pipeline.config.errors import ConfigError
from pipeline.config.model import ParScaleConfig
from pipeline.model.counting import parameter_counts
from pipeline.scaling.from_scratch import FromScratchExperiment, law_points, size_params
from pipeline.scaling.from_scratch_report import comparisons, fit_lines, results_json, runs_table
from pipeline.scaling.law import PAPER_K, KInterval, LawFit

WIDTHS = [
    {"name": "a"},
    {"name": "b", "hidden_size": 24, "ffn_hidden_size": 48},
    {"name": "c", "hidden_size": 32, "ffn_hidden_size": 64},
]


def _config(tmp_path: Path, schedule: dict | None = None, **scaling) -> Path:
    cfg = tiny_scaling_base(tmp_path, "tiny-fs", layers=2) | {
        "parscale": {"prefix_len": 2},
        "parallel": {"micro_batch_size": 4, "global_batch_size": 4, "data_parallel_size": 1},
        "optimizer": {"lr": 3e-3},
        "schedule": schedule or {"warmup_tokens": 32, "decay_fraction": 1.0, "min_lr_ratio": 0.1},
        "train": {"tokens": 512},  # replaced by scaling.tokens
        "checkpoint": {"interval_steps": 100},
        "eval": {"interval_steps": 2, "max_batches": 2},
        "logging": {"interval_steps": 10, "wandb_mode": "disabled"},
        "scaling": {"sizes": WIDTHS, "streams": [1, 2, 4], "tokens": 512, "seeds": 2} | scaling,
    }
    path = tmp_path / "fs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _plan(tmp_path: Path, schedule: dict | None = None, **scaling) -> FromScratchExperiment:
    return FromScratchExperiment(load_config(_config(tmp_path, schedule, **scaling)), dry_run=True)


def _refusal(tmp_path: Path, schedule: dict | None = None, **scaling) -> str:
    with pytest.raises(ConfigError) as exc:
        _plan(tmp_path, schedule, **scaling)
    return str(exc.value)


# ------------------------------------------------------------------ the design


def test_sizes_vary_width_at_one_depth_and_depth_varying_sizes_are_refused(tmp_path):
    exp = _plan(tmp_path)
    assert {b.config.model.num_layers for b in exp.bases.values()} == {2}
    assert [b.config.model.hidden_size for b in exp.bases.values()] == [16, 24, 32]
    deep = [{**s, "num_layers": 2 + i} for i, s in enumerate(WIDTHS)]
    message = _refusal(tmp_path, sizes=deep)
    assert "scaling.sizes" in message and "num_layers differ (a: 2, b: 3, c: 4)" in message
    assert "scaling.axis: depth" in message
    assert len(_plan(tmp_path, sizes=deep, axis="depth").bases) == 3  # the explicit opt-out


def test_sizes_must_span_three_times_in_backbone_parameters(tmp_path):
    narrow = [WIDTHS[0], {"name": "b", "hidden_size": 24, "ffn_hidden_size": 32}]
    loaded = load_config(_config(tmp_path, sizes=narrow))
    ratio = size_params(loaded, {"hidden_size": 24, "ffn_hidden_size": 32}) / size_params(loaded, {})
    assert 1 < ratio < 3
    message = _refusal(tmp_path, sizes=narrow)
    assert "scaling.sizes" in message and f"span {ratio:.2f}x" in message and "at least 3x" in message


def _ps() -> ParScaleConfig:
    return ParScaleConfig()


def test_one_size_is_the_decisive_mode(tmp_path):
    exp = _plan(tmp_path, sizes=[WIDTHS[1]], streams=[1, 8], seeds=4, prefix_control=False)
    assert list(exp.bases) == ["b"]
    kinds = sorted({(r.kind, r.streams) for r in exp.runs})
    assert kinds == [("matched_dense", 8), ("paper_k_dense", 8), ("parscale", 1), ("parscale", 8)]
    assert len(exp.runs) == 16 and exp.fits([]) is None


def test_the_budget_is_one_of_absolute_tokens_and_tokens_per_parameter(tmp_path):
    both = _refusal(tmp_path, tokens_per_param=2.0)
    assert "scaling.tokens" in both and "both are set" in both
    neither = _refusal(tmp_path, tokens=None)
    assert "neither is set" in neither
    per_param = _plan(tmp_path, tokens=None, tokens_per_param=0.2)
    assert len(set(per_param.tokens.values())) == 3  # one budget per size, grown with N


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        ({"warmup_tokens": 32, "decay_fraction": 0.0}, "schedule.decay_fraction"),
        ({"warmup_tokens": 32, "decay_fraction": 1.0, "min_lr_ratio": 0.5}, "schedule.min_lr_ratio"),
        ({"warmup_tokens": 128, "decay_fraction": 1.0}, "schedule.warmup_tokens"),
    ],
    ids=["constant-lr", "floor-too-high", "long-warmup"],
)
def test_the_schedule_must_anneal_and_warm_up_briefly(tmp_path, schedule, key):
    assert key in _refusal(tmp_path, schedule)


def test_every_arm_runs_on_every_seed_with_one_budget_and_paired_seeds(tmp_path):
    exp = _plan(tmp_path, matched_dense_streams=[4])
    arms = ["p1", "p2", "p4", "dense-matched-p4", "dense-k-p4", "p1-prefix"]
    for size in "abc":
        mine = [r for r in exp.runs if r.size == size]
        assert [r.name for r in mine] == [f"{a}-seed{i}" for i in range(2) for a in arms]  # seed-major
        cfgs = [r.loaded.config for r in mine]
        assert {c.train.tokens for c in cfgs} == {512}  # the same tokens for every size and arm
        assert all(c.train.init_from is None and c.train.skip_tokens == 0 for c in cfgs)
        assert all(
            (c.schedule, c.data, c.packing, c.parallel)
            == (cfgs[0].schedule, cfgs[0].data, cfgs[0].packing, cfgs[0].parallel)
            for c in cfgs
        )
        for i in range(2):  # one seed per index, for every arm: same backbone init and data order
            assert {r.loaded.config.run.seed for r in mine if r.seed == i} == {3 + i}
        backbone = exp.bases[size].config.model
        n = parameter_counts(backbone, _ps(), 1).non_embedding
        p4 = next(r for r in mine if r.kind == "parscale" and r.streams == 4)
        matched = next(r for r in mine if r.kind == "matched_dense")
        paper = next(r for r in mine if r.kind == "paper_k_dense")
        assert p4.counts.non_embedding == n and p4.counts.parscale > 0  # N: the backbone alone
        assert matched.counts.parscale == paper.counts.parscale == 0
        assert matched.counts.non_embedding == pytest.approx(n + p4.counts.parscale, rel=0.1)
        assert paper.counts.non_embedding == pytest.approx(n * (1 + PAPER_K * math.log(4)), rel=0.1)
        assert matched.loaded.config.model.num_layers == paper.loaded.config.model.num_layers == 2
        prefix = next(r for r in mine if r.kind == "single_prefix")
        assert prefix.loaded.config.parscale.single_prefix and prefix.loaded.config.parscale.streams == 1


# ------------------------------------------------------------------ the report on made-up results


def _rows(effects: dict[tuple[str, int], list[float]], base: list[float], size: str = "m") -> list[dict]:
    """A size's rows: P = 1 at ``base`` per seed, each other arm at base + its per-seed effect."""
    rows = []
    for (kind, p), deltas in {("parscale", 1): [0.0] * len(base), **effects}.items():
        for seed, (b, d) in enumerate(zip(base, deltas, strict=True)):
            rows.append(
                {
                    "size": size,
                    "run": f"{kind}-{p}-seed{seed}",
                    "kind": kind,
                    "streams": p,
                    "seed": seed,
                    "params": 1000,
                    "run_params": 1500 if kind.endswith("dense") else 1000,
                    "parscale_params": 400 if kind == "parscale" and p > 1 else 0,
                    "val_loss": b + d,
                }
            )
    return rows


def test_each_comparison_is_a_paired_difference_with_an_interval_and_a_verdict():
    base = [3.50, 3.60, 3.45, 3.55]  # seed effects far larger than the arms' differences: pairing removes them
    rows = _rows(
        {
            ("parscale", 8): [-0.050, -0.045, -0.055, -0.048],
            ("matched_dense", 8): [-0.052, -0.047, -0.053, -0.046],
            ("paper_k_dense", 8): [-0.02, -0.09, -0.01, -0.08],
        },
        base,
    )
    found = {c.label: c for _, c in comparisons(rows, margin=0.01)}
    assert list(found) == [
        "P=8 vs P=1",
        "P=8 vs dense matched to its parameters",
        "P=8 vs dense at 1 + 0.39 ln 8 = 1.81x",
    ]
    vs_one = found["P=8 vs P=1"]
    assert vs_one.diffs == pytest.approx((-0.050, -0.045, -0.055, -0.048)) and vs_one.verdict == "shown"
    assert vs_one.high < 0
    assert found["P=8 vs dense matched to its parameters"].verdict == "ruled out"  # within +-0.01 of it
    assert found["P=8 vs dense at 1 + 0.39 ln 8 = 1.81x"].verdict == "inconclusive"  # too noisy to say
    table = "\n".join(runs_table(rows))
    assert "| m | P=8 | 1,000 | 1.00 | 400 (40%) | 4 |" in table and "dense at 1 + 0.39 ln 8" in table


def test_comparisons_pair_by_seed_and_skip_arms_not_trained():
    rows = _rows({("parscale", 2): [-0.01, -0.02], ("single_prefix", 1): [-0.005, -0.004]}, [3.0, 3.1])
    rows = [r for r in rows if not (r["kind"] == "single_prefix" and r["seed"] == 1)]  # one seed of the control
    found = {c.label: c for _, c in comparisons(rows, margin=0.01)}
    assert set(found) == {"P=2 vs P=1", "P=2 vs P=1 + one prefix"}
    one_seed = found["P=2 vs P=1 + one prefix"]
    assert one_seed.diffs == pytest.approx((-0.005,)) and one_seed.low is None and one_seed.verdict == "inconclusive"


def test_the_fit_section_says_when_there_is_no_fit_a_bound_and_an_open_interval():
    assert "Not fitted: 1 size(s)" in fit_lines(None, 1, 8)[0]
    fit = LawFit(E=1.0, A=2e4, alpha=0.5, k=-0.48, huber=1e-6, rms_log_residual=1e-3, k_at_bound=True)
    interval = KInterval(None, 0.1, 0.95, False, "not identified: open below")
    fits = {
        "free": fit,
        "paper_k": fit,
        "k_interval": interval,
        "identified": {"E": False, "A": True, "alpha": False, "k": False},
    }
    text = "\n".join(fit_lines(fits, 3, 8))
    assert "**at the bound**" in text and "- not identified: open below" in text
    assert "E no, A yes, alpha no, k no" in text and "is worth" not in text  # no multiplier from an open interval
    closed = fits | {"free": fit.__class__(**{**fit.as_dict(), "k": 0.4, "k_at_bound": False})}
    closed["k_interval"] = KInterval(0.2, 0.7, 0.95, True, "[0.200, 0.700]")
    assert "P=8 is worth 1.83x its backbone (1.42x to 2.46x)" in "\n".join(fit_lines(closed, 3, 8))
    data = results_json([], [], fits, 0.01)
    assert data["fits"]["k_interval"]["identified"] is False and data["fits"]["free"]["k_at_bound"] is True


def test_the_law_is_fitted_on_the_backbone_n_over_seed_means():
    rows = _rows({("parscale", 4): [-0.1, -0.2]}, [3.0, 3.2]) + _rows({("parscale", 4): [-0.1, -0.1]}, [2.0, 2.0], "l")
    points = sorted(law_points(rows), key=lambda p: p.loss)
    assert {p.params for p in points} == {1000}  # the backbone's N, not N + ParScale's parameters
    assert [round(p.loss, 6) for p in points] == [1.9, 2.0, 2.95, 3.1]


# ------------------------------------------------------------------ end to end


@pytest.mark.multiprocess
def test_from_scratch_end_to_end_on_tiny_models(tmp_path):
    # one seed and no controls (the plan tests cover them): 9 tiny runs, the fit on three widths
    config = _config(tmp_path, seeds=1, matched_dense=False, paper_k_dense=False, prefix_control=False)
    proc = run_cli("scaling", str(config), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _trained(proc.stdout)
    report = tmp_path / "exp" / "report" / "scaling.md"
    results = json.loads((report.parent / "results.json").read_text())
    assert results["mode"] == "from_scratch" and results["margin"] == 0.01
    runs = sorted((r["size"], r["streams"], r["seed"]) for r in results["rows"])
    assert runs == sorted((s, p, 0) for s in "abc" for p in (1, 2, 4))
    assert {r["tokens_seen"] for r in results["rows"]} == {512}
    assert all(r["run_params"] == r["params"] and r["parscale_params"] > 0 for r in results["rows"] if r["streams"] > 1)
    assert [c["label"] for c in results["comparisons"][:2]] == ["P=2 vs P=1", "P=4 vs P=1"]
    assert all(c["verdict"] == "inconclusive" and c["low"] is None for c in results["comparisons"])  # one seed
    fits = results["fits"]
    assert math.isfinite(fits["free"]["k"]) and set(fits["identified"]) == {"E", "A", "alpha", "k"}
    text = report.read_text()
    assert "## Paired comparisons" in text and "profile-likelihood interval" in text and "bootstrap" not in text
    assert (report.parent / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![stream spread and diversity gain against tokens](streams.png)" in text
    again = run_cli("scaling", str(config), timeout=600)
    assert again.returncode == 0 and not _trained(again.stdout)


def _trained(stdout: str) -> bool:
    """Whether a trainer ran (its first line: ``training N steps x T tokens ...``)."""
    return re.search(r"^training \d+ steps x", stdout, re.M) is not None
