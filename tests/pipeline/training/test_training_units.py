"""Trainer building blocks without processes: blended data order, DP slicing, collation, the WSD
schedule, optimizer groups and the frozen-backbone switch, where a run starts in the data order."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from pipeline.checkpoint.portable import CheckpointError
from pipeline.config.job import JobConfig
from pipeline.config.training import ScheduleConfig, TrainConfig
from pipeline.data.blend import BlendedOrder
from pipeline.data.loader import collate, micro_batch_start
from pipeline.training.optim import apply_trainable, param_groups
from pipeline.training.run_data import skip_tokens
from pipeline.training.schedule import WSD


def test_blend_follows_weights_covers_every_row_once_per_pass_and_is_deterministic():
    order = BlendedOrder([10, 30], [0.25, 0.75], 4000, seed=3)
    picks = [order[g] for g in range(4000)]
    share = sum(1 for s, _ in picks if s == 0) / 4000
    assert share == pytest.approx(0.25, abs=0.002)
    first_pass = [r for s, r in picks if s == 0][:10]
    assert sorted(first_pass) == list(range(10))  # every row once per pass
    second_pass = [r for s, r in picks if s == 0][10:20]
    assert sorted(second_pass) == list(range(10)) and second_pass != first_pass  # reshuffled
    again = BlendedOrder([10, 30], [0.25, 0.75], 4000, seed=3)
    assert [again[g] for g in range(0, 4000, 7)] == picks[::7]
    other = BlendedOrder([10, 30], [0.25, 0.75], 4000, seed=4)
    assert [other[g] for g in range(100)] != picks[:100]


def test_data_parallel_slices_partition_each_global_batch():
    gb, micro, dp = 16, 2, 4
    gas = gb // (micro * dp)
    seen = sorted(
        micro_batch_start(5, m, r, gb, micro, dp) + i for m in range(gas) for r in range(dp) for i in range(micro)
    )
    assert seen == list(range(5 * gb, 6 * gb))


def test_collate_pads_masks_and_marks_documents():
    rows = [(np.array([5, 6, 7, 3, 8, 9]), [4, 2]), (np.array([4, 4, 3]), [3])]
    b = collate(rows, seq_len=5, pad_id=0, documents=True)
    assert b.input_ids.tolist() == [[5, 6, 7, 3, 8], [4, 4, 3, 0, 0]]
    assert b.labels.tolist() == [[6, 7, 3, 8, 9], [4, 3, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.segment_ids.tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    assert collate(rows, 5, 0, documents=False).segment_ids is None


def test_wsd_schedule_shapes():
    stage1 = WSD.build(ScheduleConfig(warmup_tokens=400, decay_fraction=0.0), 1e-3, 100, 100)
    assert stage1.warmup_steps == 4 and stage1(0) == pytest.approx(2.5e-4) and stage1(3) == pytest.approx(1e-3)
    assert stage1(50) == stage1(99) == pytest.approx(1e-3)
    anneal = WSD.build(ScheduleConfig(warmup_tokens=100, decay_fraction=1.0, min_lr_ratio=0.1), 1e-3, 100, 100)
    lrs = [anneal(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in pairwise(lrs))
    linear = WSD.build(ScheduleConfig(decay_fraction=0.2, decay_style="linear", min_lr_ratio=0.0), 1.0, 10, 1)
    assert [round(linear(s), 3) for s in range(10)] == [1.0] * 8 + [0.5, 0.0]


def _model():
    from pipeline.config.model import ModelConfig, ParScaleConfig
    from pipeline.model import ParScaleLM

    cfg = ModelConfig(
        num_layers=1,
        hidden_size=16,
        ffn_hidden_size=32,
        num_attention_heads=2,
        num_kv_heads=2,
        vocab_size=32,
        pad_vocab_to_multiple_of=8,
    )
    return ParScaleLM(cfg, ParScaleConfig(streams=2, prefix_len=2), 32)


def _job(**sections) -> JobConfig:
    base = {
        "model": {
            "num_layers": 1,
            "hidden_size": 16,
            "ffn_hidden_size": 32,
            "num_attention_heads": 2,
            "num_kv_heads": 2,
        },
        "train": {"tokens": 100},
        "parscale": {"streams": 2, "prefix_len": 2},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return JobConfig.model_validate(base)


def test_weight_decay_groups_and_frozen_backbone():
    from pipeline.distributed import single_process

    with single_process():
        model = _model()
        job = _job(optimizer={"no_decay": ["norm", "bias", "prefix"]})
        groups = param_groups(model, job.optimizer, job.parscale)
        decayed = {id(p) for p in groups[0]["params"]}
        names = {id(p): n for n, p in model.named_parameters()}
        assert groups[1]["weight_decay"] == 0.0
        assert all(
            "norm" in names[i] or names[i].endswith("bias") or ".prefix." in names[i]
            for i in {id(p) for p in groups[1]["params"]}
        )
        assert any("aggregate_layer.0.weight" in names[i] for i in decayed)
        trainable = apply_trainable(model, _job(parscale={"trainable": "parscale_only"}).parscale)
        live = [n for n, p in model.named_parameters() if p.requires_grad]
        assert live and all(".prefix." in n or "aggregate_layer" in n for n in live)
        assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parscale_lr_multiplier_gets_groups_of_its_own_and_deepspeed_keeps_it():
    import deepspeed
    import torch

    from pipeline.distributed import MegatronMPU, single_process
    from pipeline.training.engine import deepspeed_config, set_lr

    with single_process():
        model = _model()
        names = {id(p): n for n, p in model.named_parameters()}
        plain = param_groups(model, _job().optimizer, _job().parscale)
        assert len(plain) == 2 and all(g["lr_mult"] == 1.0 for g in plain)  # unchanged layout without a multiplier
        job = _job(optimizer={"parscale_lr_mult": 10.0})
        groups = param_groups(model, job.optimizer, job.parscale)
        own = [g for g in groups if g["lr_mult"] == 10.0]
        assert len(groups) == 4 and own
        assert all(".prefix." in names[id(p)] or "aggregate_layer" in names[id(p)] for g in own for p in g["params"])
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
        opt = torch.optim.AdamW(groups, lr=1e-3)
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=opt, config=deepspeed_config(job.parallel, job.optimizer, 1), mpu=MegatronMPU()
        )
        set_lr(engine, 2e-3)
        lrs = sorted({round(g["lr"], 9) for g in engine.optimizer.param_groups})
        assert lrs == [2e-3, 2e-2]
        engine.destroy()


def test_metrics_are_read_one_record_per_step_the_replayed_one_winning(tmp_path):
    from pipeline.training.metrics import read_records

    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 1, "loss": 5.0},
        {"step": 2, "loss": 4.0},
        {"step": 2, "kind": "eval", "val_loss": 4.5},
        {"step": 2, "loss": 3.9},
        {"step": 3, "loss": 3.5},
    ]  # killed after step 2, resumed from step 1
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    records = read_records(path)
    assert [(r["step"], r.get("kind", "train")) for r in records] == [
        (1, "train"),
        (2, "eval"),
        (2, "train"),
        (3, "train"),
    ]
    assert records[2]["loss"] == 3.9


def test_skip_tokens_given_wins_else_the_init_checkpoints_tokens_seen_else_zero(tmp_path):
    """One rule for ``parscale run``'s stage 2 and one started by hand: read on after the tokens the
    init checkpoint saw (stage 1's, carried over by to-parscale)."""
    init = tmp_path / "stage2-init-p4"
    init.mkdir()
    (init / "config.json").write_text(json.dumps({"format": "parscale-portable/1", "tokens_seen": 6 * 8 * 32}))
    imported = tmp_path / "imported"  # e.g. import-hf of a released model: nothing recorded
    imported.mkdir()
    (imported / "config.json").write_text(json.dumps({"format": "parscale-portable/1"}))
    assert skip_tokens(TrainConfig(tokens=100)) == 0
    assert skip_tokens(TrainConfig(tokens=100, init_from=str(init))) == 6 * 8 * 32
    assert skip_tokens(TrainConfig(tokens=100, init_from=str(imported))) == 0
    assert skip_tokens(TrainConfig(tokens=100, init_from=str(init), skip_tokens=0)) == 0  # a number given wins
    assert skip_tokens(TrainConfig(tokens=100, init_from=str(init), skip_tokens="1K")) == 1000
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="parscale convert import-hf"):
        skip_tokens(TrainConfig(tokens=100, init_from=str(hf)))
