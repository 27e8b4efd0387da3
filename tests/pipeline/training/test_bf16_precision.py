"""bf16 training on DeepSpeed: gradients accumulated and reduced in fp32 (``parallel.grad_accum_dtype``),
the training it gives tracks fp32, and the portable export at the end holds the fp32 master weights.
All in-process at world size 1 on CPU (bf16 math runs there, slowly: the model is tiny)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
import yaml
from helpers.training import job_config, step_losses
from safetensors.torch import load_file

from checkpoints_tools.consolidate import consolidate
from pipeline.config import ConfigError, load_config
from pipeline.config.job import JobConfig
from pipeline.distributed import distributed_world
from pipeline.training.engine import deepspeed_config
from pipeline.training.trainer import Trainer


def _config(tmp_path, data, name, **sections) -> JobConfig:
    return JobConfig.model_validate(yaml.safe_load(job_config(tmp_path, data, name, **sections).read_text()))


@contextlib.contextmanager
def _trainer(cfg: JobConfig, **kwargs):
    with distributed_world(cfg) as ctx:
        yield Trainer(cfg, ctx, **kwargs)


# ---------------------------------------------------------------------- the DeepSpeed config


def test_bf16_asks_deepspeed_for_fp32_gradient_accumulation_and_reduction(tmp_path, prepared_data):
    fp32 = _config(tmp_path, prepared_data, "a", parallel={"zero_stage": 2})
    bf16 = _config(tmp_path, prepared_data, "b", parallel={"zero_stage": 2, "precision": "bf16"})
    old = _config(tmp_path, prepared_data, "c", parallel={"precision": "bf16", "grad_accum_dtype": "bf16"})
    assert bf16.parallel.grad_accum_dtype == "fp32"  # the default
    plain = deepspeed_config(fp32.parallel, fp32.optimizer, 1)
    assert not {"bf16", "data_types", "communication_data_type"} & plain.keys()  # fp32 runs: unchanged
    mixed = deepspeed_config(bf16.parallel, bf16.optimizer, 1)
    assert mixed["data_types"] == {"grad_accum_dtype": "fp32"} and mixed["communication_data_type"] == "fp32"
    assert mixed["bf16"] == {"enabled": True, "immediate_grad_update": True}
    assert mixed.keys() - plain.keys() == {"bf16", "data_types", "communication_data_type"}
    assert deepspeed_config(old.parallel, old.optimizer, 1)["bf16"] == {"enabled": True}
    assert not {"data_types", "communication_data_type"} & deepspeed_config(old.parallel, old.optimizer, 1).keys()


def test_bf16_at_zero_0_with_fp32_accumulation_is_refused_naming_the_key(write_yaml):
    text = "run:\n  name: z\nmodel:\n  num_layers: 1\n  hidden_size: 32\n  ffn_hidden_size: 64\n"
    text += "  num_attention_heads: 4\n  num_kv_heads: 2\ntrain:\n  tokens: 1M\n"
    text += "parallel:\n  zero_stage: 0\n  precision: bf16\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write_yaml("z0.yaml", text))
    (problem,) = [str(p) for p in caught.value.problems]
    assert ":11: parallel: " in problem and "needs zero_stage >= 1" in problem
    assert "parallel.zero_stage: 1 or more, or parallel.grad_accum_dtype: bf16" in problem
    ok = load_config(write_yaml("z0b.yaml", text + "  grad_accum_dtype: bf16\n")).config
    assert ok.parallel.grad_accum_dtype == "bf16"


# ---------------------------------------------------------------------- the engine


@contextlib.contextmanager
def _reductions():
    """The dtypes of every floating-point all-reduce while inside (DeepSpeed reduces through torch's)."""
    seen, original = [], dist.all_reduce

    def spy(tensor, *args, **kwargs):
        if tensor.is_floating_point():
            seen.append((tensor.dtype, tensor.numel()))
        return original(tensor, *args, **kwargs)

    dist.all_reduce = spy
    try:
        yield seen
    finally:
        dist.all_reduce = original


@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_gradients_are_accumulated_and_reduced_in_fp32(tmp_path, prepared_data, single_rank, stage):
    for accum in ("fp32", "bf16"):
        cfg = _config(
            tmp_path,
            prepared_data,
            f"s{stage}{accum}",
            parallel={"zero_stage": stage, "precision": "bf16", "grad_accum_dtype": accum},
        )
        with _trainer(cfg, callbacks=[]) as trainer:
            engine = trainer.engine
            params = sum(p.numel() for p in engine.module.parameters())
            assert next(engine.module.parameters()).dtype == torch.bfloat16
            with _reductions() as seen:
                trainer.train_step()  # 4 micro-batches
            gradients = [dtype for dtype, numel in seen if numel >= params // 2]  # the gradient buckets
            assert gradients, seen
            if accum == "bf16":  # what DeepSpeed does unless told: the spy sees the gradients
                assert set(gradients) == {torch.bfloat16}
                continue
            assert set(gradients) == {torch.float32} and torch.bfloat16 not in {d for d, _ in seen}
            if stage == 1:  # DeepSpeed's BF16_Optimizer: one fp32 gradient buffer per parameter group
                assert type(engine.optimizer).__name__ == "BF16_Optimizer"
                assert {b.dtype for b in engine.optimizer.fp32_groups_gradients_flat} == {torch.float32}
            else:
                assert engine.optimizer.gradient_accumulation_dtype == torch.float32


STEPS = 50


def _losses_and_norms(cfg: JobConfig) -> tuple[list[float], list[float]]:
    with _trainer(cfg, callbacks=[]) as trainer:
        outcomes, norms = [], []
        for _ in range(STEPS):
            outcomes.append(trainer.train_step())
            norms.append(float(trainer.engine.get_global_grad_norm()))
        trainer.resolve()
        assert trainer.skipped == 0
        return [o.loss_value for o in outcomes], norms


def test_bf16_training_tracks_fp32_over_50_steps(tmp_path, prepared_data, single_rank):
    """ZeRO 1 (the default), 4 micro-batches a step. Measured (2 cores, torch 2.13, DeepSpeed
    0.19.8): final loss 3.8251 (fp32) vs 3.8254 (bf16), a gap of 3.5e-4; the largest gap at any
    step 5.2e-3; grad norms within 5.1% at every step. Before the fix (bf16 micro-batch gradients
    re-added at every micro-batch): final gap 1.2e-2, step gap 4.8e-2, grad norm 2.7x to 4.6x."""
    sections = {"train": {"tokens": STEPS * 8 * 32}, "checkpoint": {"interval_steps": 1000}}
    fp32, fp32_norms = _losses_and_norms(_config(tmp_path, prepared_data, "fp32", **sections))
    bf16, bf16_norms = _losses_and_norms(
        _config(tmp_path, prepared_data, "bf16", parallel={"precision": "bf16"}, **sections)
    )
    assert fp32[-1] < fp32[0] - 1.0  # it trains
    assert abs(bf16[-1] - fp32[-1]) < 4e-3
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 2e-2
    assert max(abs(a - b) / a for a, b in zip(fp32_norms, bf16_norms, strict=True)) < 0.2


# ---------------------------------------------------------------------- the portable export


@pytest.mark.parametrize(
    ("parallel", "trainable"),
    [
        ({"zero_stage": 0, "grad_accum_dtype": "bf16"}, "all"),
        ({"zero_stage": 1}, "all"),
        ({"zero_stage": 2}, "all"),
        ({"zero_stage": 3}, "all"),
        ({"zero_stage": 1}, "parscale_only"),
        ({"zero_stage": 3}, "parscale_only"),
    ],
    ids=["zero0", "zero1", "zero2", "zero3", "zero1-frozen", "zero3-frozen"],
)
def test_a_bf16_runs_portable_holds_its_fp32_masters(tmp_path, prepared_data, single_rank, parallel, trainable):
    """The export written at the end equals, to the bit, what ``consolidate`` reads from the same
    run's last checkpoint (the optimizer's fp32 masters), not the bf16-rounded module weights. A
    frozen backbone (``parscale.trainable: parscale_only``) has no masters: both give its bf16
    weights, upcast."""
    cfg = _config(
        tmp_path,
        prepared_data,
        "run",
        parallel={"precision": "bf16", **parallel},
        train={"tokens": 3 * 8 * 32},
        parscale={"streams": 2, "prefix_len": 4, "trainable": trainable},
    )
    with _trainer(cfg) as trainer:
        result = trainer.run()
        module = {name: p.detach().float().clone() for name, p in trainer.engine.module.named_parameters()}
    exported = load_file(f"{result['portable']}/model.safetensors")
    consolidate(tmp_path / "run" / "checkpoints", tmp_path / "masters", verify=False)
    masters = load_file(str(tmp_path / "masters" / "model.safetensors"))
    assert exported.keys() == masters.keys() and "model.layers.0.self_attn.prefix.prefix_k" in exported
    for name, tensor in exported.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, masters[name]), name
    rounded = [n for n in exported if not torch.equal(exported[n], exported[n].bfloat16().float())]
    assert rounded  # the masters hold more than bf16 does
    if parallel["zero_stage"] < 3:  # (ZeRO 3's module weights are partitions outside a gather)
        assert all(torch.equal(exported[n].bfloat16().float(), module[n][: len(exported[n])]) for n in exported)


def test_a_bf16_zero1_run_resumes_exactly(tmp_path, prepared_data, single_rank):
    """ZeRO 1 in bf16 is DeepSpeed's BF16_Optimizer (its own checkpoint files): 2 steps, then a rerun
    with a 4-step budget resumes at step 2 and matches the 4-step run (constant LR after warmup)."""

    def run(name: str, steps: int) -> dict:
        cfg = _config(tmp_path, prepared_data, name, parallel={"precision": "bf16"}, train={"tokens": steps * 8 * 32})
        with _trainer(cfg) as trainer:
            assert type(trainer.engine.optimizer).__name__ == "BF16_Optimizer"
            return trainer.run()

    run("split", 2)
    assert run("split", 4)["step"] == 4
    run("whole", 4)
    split, whole = step_losses(tmp_path / "split"), step_losses(tmp_path / "whole")
    assert sorted(whole) == [1, 2, 3, 4] and split[3] == whole[3] and split[4] == whole[4]
