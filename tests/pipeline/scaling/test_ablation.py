"""``parscale ablate`` without training: the config section's checks, the plan (which runs, where,
with which settings, stage 1 shared) and the report's arithmetic. The real run is part of the main
job's end-to-end test (tests/pipeline/mainjob/test_main_job.py)."""

from __future__ import annotations

import math

import pytest
import yaml
from helpers.training import TINY_MODEL

from pipeline.config import ConfigError, load_config
from pipeline.scaling.ablation import Stage2Ablation
from pipeline.scaling.ablation_report import findings, summarize, table

VARIANTS = [
    {"name": "eps-0", "set": {"stage2.parscale.eps": 0.0}},
    {"name": "lr-x10", "set": {"optimizer.parscale_lr_mult": 10}},
]


def _config(tmp_path, variants=VARIANTS, seeds=2):
    cfg = {
        "run": {"name": "abl", "output_dir": str(tmp_path / "job"), "seed": 7},
        "data": {"sources": [{"type": "stdlib", "glob": "json/*.py"}], "output_dir": str(tmp_path / "data")},
        "packing": {"seq_len": 32},
        "model": {k: v for k, v in TINY_MODEL.items() if k != "pad_vocab_to_multiple_of"},
        "parallel": {"data_parallel_size": 2, "micro_batch_size": 2, "global_batch_size": 8},
        "train": {"tokens": 2048},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 4}, "tokens": 1024},
        "ablation": {"seeds": seeds, "variants": variants},
    }
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_plan_shares_stage_1_and_gives_each_variant_its_settings_and_seeds(tmp_path):
    path = _config(tmp_path)
    ablation = Stage2Ablation(load_config(path), dry_run=True)
    keys = [v.key for v in ablation.variants]
    assert keys == ["baseline-seed0", "baseline-seed1", "eps-0-seed0", "eps-0-seed1", "lr-x10-seed0", "lr-x10-seed1"]
    job = tmp_path / "job"
    assert ablation.variants[0].job is ablation.main and ablation.variants[0].portable == job / "stage2-p2" / "portable"
    by_key = {v.key: v for v in ablation.variants}
    for v in ablation.variants[1:]:
        assert v.job.folders.consolidated == job / "convert" / "stage1-fp32"  # stage 1 shared
        assert v.portable == job / "ablation" / v.key / "stage2-p2" / "portable"
        assert v.init == job / "ablation" / v.key / "convert" / "stage2-init-p2"
        assert v.job.cfg.run.seed == 7 and v.job.init_seed_offset == v.seed  # same data order, another init
    eps = by_key["eps-0-seed1"].job.configs["stage2-p2"].config
    assert eps.parscale.eps == 0.0 and eps.optimizer.parscale_lr_mult == 1
    assert str(eps.train.init_from).endswith("ablation/eps-0-seed1/convert/stage2-init-p2")
    lr = by_key["lr-x10-seed0"].job.configs["stage2-p2"].config
    assert lr.optimizer.parscale_lr_mult == 10 and lr.parscale.eps == 0.1
    assert by_key["baseline-seed1"].sets == () and by_key["eps-0-seed0"].sets == ("stage2.parscale.eps=0.0",)


@pytest.mark.parametrize(
    "variants, expected",
    [
        ([{"name": "wide", "set": {"model.hidden_size": 64}}], "a variant may set only stage2.* / optimizer.* keys"),
        ([{"name": "a", "set": {"stage2.tokens": 10}}, {"name": "a", "set": {"stage2.tokens": 20}}], "must be unique"),
        ([{"name": "baseline", "set": {"stage2.tokens": 10}}], "not 'baseline'"),
        ([{"name": "empty", "set": {}}], "ablation.variants[0].set"),
    ],
)
def test_bad_variants_are_refused_naming_the_key(tmp_path, variants, expected):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, variants))
    assert expected in str(err.value) and "ablation.variants" in str(err.value)


def test_a_variant_that_changes_p_is_refused(tmp_path):
    path = _config(tmp_path, [{"name": "p4", "set": {"stage2.parscale.streams": 4}}])
    with pytest.raises(ConfigError, match="must keep stage2.parscale.streams"):
        Stage2Ablation(load_config(path), dry_run=True)


def _result(loss, gain=None, spread=None, cosine=None):
    return {
        "val_loss": loss,
        "diversity_gain": gain,
        "stream_spread": spread,
        "weight_entropy": math.log(2) * 0.9,
        "max_mean_weight": 0.6,
        "prefix_cosine": cosine,
        "update_cosine": cosine,
    }


def test_the_summary_averages_seeds_and_judges_each_difference_against_its_seed_spreads():
    results = {
        "baseline-seed0": _result(3.00, 0.0, 0.01, 0.9),
        "baseline-seed1": _result(3.02, 0.0, 0.01, 0.9),
        "good-seed0": _result(2.90, 0.01, 0.1, 0.2),
        "good-seed1": _result(2.92, 0.03, 0.1, 0.4),
        "same-seed0": _result(3.00),
        "same-seed1": _result(3.03),
        "dense": {"val_loss": 3.05},
        "prefix1": {"val_loss": 3.01},
    }
    plan = [(n, s, ()) for n in ("baseline", "good", "same") for s in (0, 1)]
    rows = {r["variant"]: r for r in summarize(plan, results, streams=2)}
    good = rows["good"]
    assert good["val_loss"] == pytest.approx(2.91) and good["seed_spread"] == pytest.approx(0.02)
    assert good["vs_baseline"] == pytest.approx(-0.10) and good["vs_dense"] == pytest.approx(-0.14)
    assert good["vs_prefix1"] == pytest.approx(-0.10) and good["diag"]["diversity_gain"] == pytest.approx(0.02)
    assert good["diag"]["weight_entropy"] == pytest.approx(0.9) and "diversity_gain" not in rows["same"]["diag"]
    lines = findings(list(rows.values()))
    assert lines[0].startswith("- `good`: -0.1000 nats, lower than the baseline beyond the seed spread (0.0200)")
    assert lines[1].startswith("- `same`: +0.0050 nats, within the seed spread (0.0300)")
    rendered = table(list(rows.values()))
    assert rendered[0].count("|") == len(rendered[1].split("---")) and "2.9100 (2.9000, 2.9200)" in rendered[3]
