"""Check a launched world end to end and record its topology: every rank joins, the TP and DP
groups have the right members (all-reduces over each), and one DeepSpeed ZeRO step runs over a
pair of megatron-core TP layers through the ``mpu`` adapter. Rank 0 writes ``topology.json``.

    torchrun --nproc_per_node=2 -m pipeline.distributed.healthcheck CONFIG --out DIR [--set k=v]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..config.cli_args import add_config_args, load_from_args
from ..utils import collectives
from ..utils.fs import atomic_write_text
from .bootstrap import ParallelContext, destroy_distributed, init_distributed
from .mpu import MegatronMPU

TOPOLOGY_NAME = "topology.json"


def _group_sum(value: float, group) -> float:
    return float(collectives.all_reduce(torch.tensor([value], dtype=torch.float64), "sum", group).item())


def _check_groups(ctx: ParallelContext) -> dict:
    from megatron.core import parallel_state as ps

    tp_group, dp_group = ps.get_tensor_model_parallel_group(), ps.get_data_parallel_group()
    record = {
        "tp_group": dist.get_process_group_ranks(tp_group),
        "dp_group": dist.get_process_group_ranks(dp_group),
        "tp_allreduce": _group_sum(1.0, tp_group),
        "dp_allreduce": _group_sum(1.0, dp_group),
        "world_rank_sum": _group_sum(float(ctx.rank), None),
    }
    expected = {
        "tp_allreduce": ctx.tp_size,
        "dp_allreduce": ctx.dp_size,
        "world_rank_sum": ctx.world_size * (ctx.world_size - 1) / 2,
    }
    record["problems"] = [f"{k}={record[k]} expected {v}" for k, v in expected.items() if record[k] != v]
    return record


def _deepspeed_step(ctx: ParallelContext, zero_stage: int, seed: int) -> float:
    """One ZeRO step of Column->Row parallel linears; returns the loss (equal on every rank)."""
    import deepspeed
    from megatron.core import ModelParallelConfig, tensor_parallel

    torch.manual_seed(seed)
    mp_config = ModelParallelConfig(
        tensor_model_parallel_size=ctx.tp_size,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        perform_initialization=True,
    )
    width = 16  # fixed, so every TP size splits the same master weights

    def init(weight):
        return torch.nn.init.normal_(weight, std=0.02)

    class TwoLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = tensor_parallel.ColumnParallelLinear(
                width, 4 * width, config=mp_config, init_method=init, bias=True, gather_output=False
            )
            self.down = tensor_parallel.RowParallelLinear(
                4 * width,
                width,
                config=mp_config,
                init_method=init,
                bias=True,
                input_is_parallel=True,
                skip_bias_add=False,
            )

        def forward(self, x):
            h, _ = self.up(x)
            y, _ = self.down(torch.nn.functional.gelu(h))
            return (y - x).pow(2).mean()

    model = TwoLayer().to(ctx.device)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=MegatronMPU())
    generator = torch.Generator().manual_seed(seed + ctx.dp_rank)
    x = torch.randn(2, width, generator=generator).to(ctx.device)
    loss = engine(x)
    engine.backward(loss)
    engine.step()
    mean = _group_sum(float(loss.item()), None) / ctx.world_size
    engine.destroy()
    return mean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.distributed.healthcheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--out", required=True, help="directory for topology.json")
    parser.add_argument("--no-deepspeed", action="store_true", help="skip the DeepSpeed ZeRO step")
    args = parser.parse_args(argv)
    try:
        loaded = load_from_args(args)
        ctx = init_distributed(loaded.config, loaded.error)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        record = {"context": ctx.as_dict(), **_check_groups(ctx)}
        if not args.no_deepspeed:
            record["deepspeed_zero_stage"] = loaded.config.parallel.zero_stage
            record["deepspeed_loss"] = _deepspeed_step(ctx, loaded.config.parallel.zero_stage, loaded.config.run.seed)
        records = collectives.all_gather_object(record)
        ok = not any(r["problems"] for r in records)
        if ctx.is_main:
            summary = {
                "ok": ok,
                "world_size": ctx.world_size,
                "tp_size": ctx.tp_size,
                "dp_size": ctx.dp_size,
                "backend": ctx.backend,
                "ranks": records,
            }
            path = atomic_write_text(Path(args.out) / TOPOLOGY_NAME, json.dumps(summary, indent=2))
            print(
                f"healthcheck: world {ctx.world_size} = TP {ctx.tp_size} x DP {ctx.dp_size} on {ctx.backend}: "
                f"{'ok' if ok else 'FAILED'} -> {path}"
            )
        return 0 if ok else 1
    finally:
        destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
