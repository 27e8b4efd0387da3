"""Rank worker (``helpers.multirank.run_ranks``, or torchrun): build the model at the launched TP
size, run forward + backward on a fixed batch (documents packed in a row, a padded tail), gather
logits and every gradient to full size, and the forward logits again with FlexAttention, and save
them from rank 0.

    torchrun --nproc_per_node=N tests/helpers/workers/tp_model.py OUT_DIR CONFIG [CONFIG ...]

Each CONFIG (same parallel section) gives OUT_DIR/<config stem>.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.config import load_config
from pipeline.distributed import destroy_distributed, init_distributed
from pipeline.model import ParScaleLM


def full_grad(param: torch.nn.Parameter, tp_group, tp_size: int) -> torch.Tensor:
    """The gradient of the unsplit parameter: TP-split ones gathered along their partition dim."""
    grad = param.grad.detach().contiguous()
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return grad.clone()
    parts = [torch.empty_like(grad) for _ in range(tp_size)]
    dist.all_gather(parts, grad, group=tp_group)
    return torch.cat(parts, dim=param.partition_dim)


def compute(out_dir: str, configs: list[str]) -> None:
    ctx = init_distributed(load_config(configs[0]).config)
    for config in configs:
        run(load_config(config).config, ctx, Path(out_dir) / f"{Path(config).stem}.pt")
    destroy_distributed()


def main() -> None:
    compute(sys.argv[1], sys.argv[2:])


def run(cfg, ctx, out: Path) -> None:
    from megatron.core import parallel_state as ps

    torch.manual_seed(cfg.run.seed)
    model = ParScaleLM(cfg.model, cfg.parscale, cfg.model.vocab_size, tp_rank=ctx.tp_rank, tp_size=ctx.tp_size)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 17), generator=torch.Generator().manual_seed(7))
    segments = torch.tensor([[0] * 6 + [1] * 7 + [2] * 3, [0] * 16])  # row 0: two documents, a padded tail
    result = model(ids[:, :-1], labels=ids[:, 1:], segment_ids=segments)
    result.loss.backward()
    group = ps.get_tensor_model_parallel_group()
    grads = {name: full_grad(p, group, ctx.tp_size) for name, p in model.named_parameters()}
    with torch.no_grad():
        logits = model.full_logits(model(ids[:, :-1], segment_ids=segments).logits)
        model.attention_backend = "flex"  # forward only: FlexAttention has no CPU backward
        flex_logits = model.full_logits(model(ids[:, :-1], segment_ids=segments).logits)
    if ctx.rank == 0:
        torch.save({"loss": result.loss.detach(), "logits": logits, "flex_logits": flex_logits, "grads": grads}, out)


if __name__ == "__main__":
    main()
