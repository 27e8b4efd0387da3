"""The scaling experiment: the law fit (known parameters recovered), dense equivalents, exact
inference memory, config checks, and ``parscale scaling`` end to end on tiny models (report, plot,
every number in results.json; a rerun trains nothing)."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import yaml
from helpers.process import cli, run_cli
from helpers.scaling import tiny_scaling_base

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model.counting import parameter_counts
from pipeline.scaling.inference_cost import decode_cost, dense_equivalent, non_embedding
from pipeline.scaling.law import PAPER_K, Point, fit_law

SIZES = (2e5, 6e5, 2e6)


def _points(E, A, alpha, k, noise=0.0, seed=0):
    rng = random.Random(seed)
    return [
        Point(n, p, (E + (A / (n * (k * math.log(p) + 1))) ** alpha) * (1 + rng.gauss(0, noise)))
        for n in SIZES
        for p in (1, 2, 4, 8)
    ]


def test_fit_recovers_a_known_law_and_tells_a_wrong_k_apart():
    fit = fit_law(_points(2.0, 3e4, 0.35, 0.2))
    assert fit.E == pytest.approx(2.0, rel=1e-3) and fit.alpha == pytest.approx(0.35, rel=1e-3)
    assert fit.k == pytest.approx(0.2, rel=1e-3) and fit.A == pytest.approx(3e4, rel=1e-2)
    assert fit.predict(6e5, 4) == pytest.approx(2.0 + (3e4 / (6e5 * (0.2 * math.log(4) + 1))) ** 0.35, rel=1e-6)
    assert fit.param_multiplier(8) == pytest.approx(0.2 * math.log(8) + 1, rel=1e-3)
    pinned = fit_law(_points(2.0, 3e4, 0.35, 0.2), fixed_k=PAPER_K)
    assert pinned.k == PAPER_K and pinned.k_fixed and pinned.huber > 100 * fit.huber
    noisy = fit_law(_points(2.0, 3e4, 0.35, 0.2, noise=0.001))
    assert noisy.k == pytest.approx(0.2, abs=0.1)


def test_fit_needs_two_sizes_and_two_stream_counts():
    with pytest.raises(ValueError, match="two model sizes"):
        fit_law([Point(1e5, p, 3.0 - 0.01 * p) for p in (1, 2, 4)])


BASE = ModelConfig(
    num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, num_kv_heads=2, max_seq_len=256
)


def test_dense_equivalent_has_the_target_size_and_the_same_depth_and_heads():
    eq = dense_equivalent(BASE, 512, PAPER_K * math.log(8) + 1)
    target = non_embedding(BASE, 512) * (PAPER_K * math.log(8) + 1)
    assert abs(non_embedding(eq, 512) - target) / target < 0.03
    assert eq.num_layers == 2 and eq.kv_channels == BASE.kv_channels and eq.hidden_size > BASE.hidden_size
    assert eq.num_attention_heads // eq.num_kv_heads == 2


def test_decode_memory_is_weights_plus_the_kv_cache_of_every_stream():
    with single_process():
        dense = decode_cost(BASE, ParScaleConfig(), 512, batch=2, prompt=8, new=3, repeats=1)
        p4 = decode_cost(BASE, ParScaleConfig(streams=4, prefix_len=5), 512, batch=2, prompt=8, new=3, repeats=1)
    kv_row = 2 * BASE.num_layers * BASE.num_kv_heads * BASE.kv_channels * 4  # k and v, fp32
    weights = non_embedding(BASE, 512) * 4 + 512 * 64 * 4  # tied embeddings
    assert dense.bytes == weights + kv_row * 2 * 11
    extra = p4.bytes - dense.bytes - kv_row * (8 * 16 - 2 * 11)  # 8 cache rows of 5 prefix + 11 tokens
    prefixes = BASE.num_layers * 2 * 4 * BASE.num_kv_heads * 5 * BASE.kv_channels
    aggregator = (4 * 64 * 64 + 64) + (64 * 4 + 4)
    assert extra == 4 * (prefixes + aggregator)
    assert prefixes + aggregator == parameter_counts(BASE, ParScaleConfig(streams=4, prefix_len=5), 512).parscale
    assert dense.seconds_per_token > 0 and p4.seconds_per_token > 0


def test_scaling_config_needs_three_sizes_and_p1(write_yaml):
    # two_stage; from_scratch takes one size or more (tests/pipeline/scaling/test_from_scratch.py)
    sizes = [{"name": f"s{i}", "hidden_size": 32 * (i + 1)} for i in range(2)]
    scaling = {"mode": "two_stage", "sizes": sizes, "streams": [2, 4, 8]}
    path = write_yaml("bad.yaml", yaml.safe_dump({"scaling": scaling}))
    proc = cli("config", str(path))
    assert proc.returncode == 2
    assert "scaling.sizes" in proc.stderr and "at least 3" in proc.stderr
    assert "scaling.streams" in proc.stderr and "must hold 1" in proc.stderr


def _trained(stdout: str) -> bool:
    """Whether a trainer ran (its first line: ``training N steps x T tokens ...``)."""
    return re.search(r"^training \d+ steps x", stdout, re.M) is not None


@pytest.mark.multiprocess
def test_scaling_command_end_to_end_on_tiny_models(tmp_path):
    cfg = {
        **tiny_scaling_base(tmp_path, "tiny-scaling", layers=1),
        "parallel": {"micro_batch_size": 4, "global_batch_size": 4, "data_parallel_size": 1},
        "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_tokens": 64},
        "train": {"tokens": 4 * 32 * 4},
        "checkpoint": {"interval_steps": 100},
        "eval": {"interval_steps": 1, "max_batches": 2},
        "logging": {"interval_steps": 1, "wandb_mode": "disabled"},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 2}, "tokens": 2 * 4 * 32},
        "scaling": {
            "mode": "two_stage",
            "prefix_control": False,
            "sizes": [
                {"name": "a"},
                {"name": "b", "hidden_size": 24, "ffn_hidden_size": 48},
                {"name": "c", "hidden_size": 32, "ffn_hidden_size": 64, "num_layers": 2},
            ],
            "streams": [1, 2, 4],
            "inference": {"batch_sizes": [1, 2], "prompt_len": 4, "new_tokens": 2, "repeats": 1},
        },
    }
    config = tmp_path / "scaling.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_cli("scaling", str(config), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _trained(proc.stdout)
    report = tmp_path / "exp" / "report" / "scaling.md"
    assert f"report: {report}" in proc.stdout.replace("\n", "")
    results = json.loads((report.parent / "results.json").read_text())
    assert sorted((r["size"], r["streams"]) for r in results["rows"]) == [(s, p) for s in "abc" for p in (1, 2, 4)]
    assert len({r["params"] for r in results["rows"]}) == 3
    assert all(r["tokens_seen"] == 2 * 4 * 32 for r in results["rows"])
    assert all((r["stream_spread"] is None) == (r["streams"] == 1) for r in results["rows"])
    assert all(r["stream_spread"] > 0 for r in results["rows"] if r["streams"] > 1)
    free = results["fits"]["free"]
    assert math.isfinite(free["k"]) and math.isfinite(free["E"]) and results["fits"]["paper_k"]["k"] == PAPER_K
    assert {(r["batch"], r["streams"]) for r in results["inference"] if r["k"] == PAPER_K} == {
        (b, p) for b in (1, 2) for p in (2, 4)
    }
    text = report.read_text()
    assert "| k |" in text and f"**{PAPER_K}**" in text and "![loss vs N and P" in text and "Measured on:" in text
    budget = results["budget"]  # the largest size's stage-2 evaluations at steps 1 and 2
    assert budget["size"] == "c" and [r["tokens"] for r in budget["rows"]] == [4 * 32, 2 * 4 * 32]
    last = {r["streams"]: r["val_loss"] for r in results["rows"] if r["size"] == "c"}
    assert budget["rows"][-1]["losses"] == pytest.approx([last[1], last[2], last[4]], abs=1e-4)
    assert budget["largest_tried"] == pytest.approx(2 * 4 * 32 / budget["params"])
    assert "## Stage-2 budget: when the P ordering appears" in text and "stage-2 tokens per parameter" in text
    # the largest size: 2 stage-2 seeds at every P (the other init and stage-2 data), the same stage 1
    seeded = [r for r in results["rows"] if r["size"] == "c"]
    assert all(r["seeds"] == 2 and r["seed_losses"][0] != r["seed_losses"][1] for r in seeded)
    assert all(r["seeds"] == 1 for r in results["rows"] if r["size"] != "c")
    paired = {(c["size"], c["label"]): c for c in results["comparisons"]}
    assert len(paired["c", "P=4 vs P=1 (dense continued)"]["diffs"]) == 2 and len(paired) == 3 * 2
    assert paired["a", "P=2 vs P=1 (dense continued)"]["low"] is None and "## Paired comparisons" in text
    assert "k_interval" in results["fits"] and set(results["fits"]["identified"]) == {"E", "A", "alpha", "k"}
    assert budget["rows"][-1]["seeds"] == [2, 2, 2] and "not claimed: one seed" not in text
    assert not (tmp_path / "exp" / "c" / "stage2-seed1" / "stage1").exists()
    assert (report.parent / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for size in "abc":
        for stage in ("stage1", "stage2-p2", "stage2-p4", "stage2-dense"):
            assert (tmp_path / "exp" / size / stage / "portable" / "model.safetensors").exists()

    again = run_cli("scaling", str(config), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not _trained(again.stdout) and "measuring decode" not in again.stdout


def test_the_two_stage_budget_is_where_the_ordering_appears_and_then_holds():
    from pipeline.scaling.budget import appears_at, ordered

    assert ordered([3.0, 2.9, 2.8]) and not ordered([3.0, 3.0, 2.8]) and not ordered([3.0, 2.8, 2.9])
    rows = [{"tokens_per_param": t, "ordered": o} for t, o in ((0.1, True), (0.2, False), (0.3, True), (0.4, True))]
    assert appears_at(rows) == 0.3  # the early ordered point does not count: it did not hold
    assert appears_at(rows[:2]) is None and appears_at([]) is None


def test_a_stage2_budget_per_parameter_gives_each_size_its_tokens_and_the_report_says_so(tmp_path):
    from pipeline.config import load_config
    from pipeline.scaling.experiment import ScalingExperiment
    from pipeline.scaling.report import _stage2_budget

    config = tmp_path / "budget.yaml"
    cfg = tiny_scaling_base(tmp_path, "budget", layers=1) | {
        "train": {"tokens": 512},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 2}, "tokens": 999},
        "scaling": {
            "mode": "two_stage",
            "stage2_tokens_per_param": 0.5,
            "sizes": [{"name": "a"}, {"name": "b", "hidden_size": 24, "ffn_hidden_size": 48}, {"name": "c"}],
            "streams": [1, 2, 4],
        },
    }
    config.write_text(yaml.safe_dump(cfg))
    exp = ScalingExperiment(load_config(config), dry_run=True)
    tokens = {name: job.cfg.stage2.tokens for name, job in exp.jobs.items()}
    assert tokens == {name: math.ceil(0.5 * non_embedding(job.cfg.model, 1)) for name, job in exp.jobs.items()}
    assert tokens["b"] > tokens["a"] and 999 not in tokens.values()
    assert _stage2_budget(exp).startswith(
        f"0.5 x N tokens (N: non-embedding parameters; a {tokens['a']:,}, b {tokens['b']:,}, c {tokens['c']:,} tokens;"
    )
    assert "as a fraction of stage 1 it differs across sizes" in _stage2_budget(exp)
