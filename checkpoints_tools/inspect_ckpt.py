"""``parscale convert inspect``: what a checkpoint holds, and ``verify``: checksums and shapes,
non-zero exit on any mismatch. Portable checkpoints are read from the safetensors header only;
trainer checkpoints (DeepSpeed ZeRO files, or ``reshard`` output) are read rank by rank."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from pipeline.checkpoint import tp_partition
from pipeline.checkpoint.portable import CONFIG, TOKENIZER, WEIGHTS, CheckpointError, read_config
from pipeline.checkpoint.trainer_ckpt import TrainerCheckpoint
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.model.counting import parameter_counts
from pipeline.utils.fs import file_sha256


def tensor_shapes(directory: Path) -> dict[str, tuple[list[int], str]]:
    path = directory / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: (handle.get_slice(k).get_shape(), handle.get_slice(k).get_dtype()) for k in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path}: corrupt or truncated ({exc})") from None


def _portable(directory: Path) -> bool:
    return (directory / CONFIG).exists() or not directory.exists()


def _counts(model: ModelConfig, ps: ParScaleConfig, vocab: int) -> dict:
    counts = parameter_counts(model, ps, vocab)
    return {
        "total": counts.total,
        "non_embedding": counts.non_embedding,
        "parscale_extra": counts.parscale,
        "parscale_extra_pct": 100 * counts.parscale_fraction,
    }


def _trainer_config(ck: TrainerCheckpoint) -> dict:
    return {"model": ck.model.identity(), "parscale": ck.parscale.model_dump(mode="json"), "vocab_size": ck.vocab}


def inspect(directory: str | Path) -> dict:
    directory = Path(directory)
    if not _portable(directory):
        ck = TrainerCheckpoint(directory)
        files = sorted(f for f in ck.folder.iterdir() if f.suffix in (".pt", ".safetensors"))
        return (
            ck.describe()
            | {
                "streams": ck.parscale.streams,
                "prefix_len": ck.parscale.prefix_len if ck.parscale.has_prefix else 0,
                "parameters": _counts(ck.model, ck.parscale, ck.vocab),
                "files": {f.name: f.stat().st_size for f in files},
            }
            | _trainer_config(ck)
        )
    config = read_config(directory)
    model, ps = ModelConfig.model_validate(config["model"]), ParScaleConfig.model_validate(config["parscale"])
    shapes = tensor_shapes(directory)
    return {
        "path": str(directory),
        "streams": ps.streams,
        "prefix_len": ps.prefix_len if ps.has_prefix else 0,
        "tp": 1,
        "dtype": sorted({dtype for _, dtype in shapes.values()}),
        "parameters": _counts(model, ps, config["vocab_size"])
        | {"in_file": sum(_numel(s) for s, _ in shapes.values())},
        "tokens_seen": config.get("tokens_seen"),
        "step": config.get("step"),
        "model": config["model"],
        "parscale": config["parscale"],
        "vocab_size": config["vocab_size"],
    }


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def verify(directory: str | Path) -> list[str]:
    """Every problem found (empty = the checkpoint is consistent)."""
    directory = Path(directory)
    if not _portable(directory):
        try:
            ck = TrainerCheckpoint(directory)
        except CheckpointError as exc:  # damaged since saved, or unreadable: the files named
            return [str(exc)]
        return _verify_trainer(ck)
    problems = []
    config = read_config(directory)
    for name, expected in config.get("sha256", {}).items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != expected:
            problems.append(f"{path}: sha256 differs from {directory / CONFIG}")
    if "sha256" not in config:
        problems.append(f"{directory / CONFIG}: no checksums recorded")
    recorded = config.get("tokenizer")
    if recorded is None and not (directory / TOKENIZER).exists():
        problems.append(f"{directory}: carries no tokenizer")
    elif recorded is not None and recorded["path"] not in config.get("sha256", {}):
        problems.append(f"{directory / CONFIG}: the tokenizer's {recorded['path']} has no checksum recorded")
    try:
        shapes = tensor_shapes(directory)
    except CheckpointError as exc:
        return problems + [str(exc)]
    expected = expected_shapes(config)
    for name in sorted(expected.keys() | shapes.keys()):
        if name not in shapes:
            problems.append(f"{directory / WEIGHTS}: missing {name}")
        elif name not in expected:
            problems.append(f"{directory / WEIGHTS}: unexpected {name}")
        elif list(shapes[name][0]) != list(expected[name]):
            problems.append(
                f"{directory / WEIGHTS}: {name} has shape {shapes[name][0]}, config implies {expected[name]}"
            )
    return problems


def _verify_trainer(ck: TrainerCheckpoint) -> list[str]:
    """Every TP rank's tensors load (ZeRO partitions complete, nothing truncated) and, merged, have
    the shapes the checkpoint's config implies."""
    try:
        full, _ = tp_partition.merge([ck.rank_state(rank) for rank in range(ck.tp)], ck.vocab)
    except CheckpointError as exc:
        return [str(exc)]
    expected = expected_shapes(_trainer_config(ck))
    problems = [f"{ck.folder}: missing {n}" for n in sorted(expected.keys() - full.keys())]
    problems += [f"{ck.folder}: unexpected {n}" for n in sorted(full.keys() - expected.keys())]
    problems += [
        f"{ck.folder}: {n} merges to {list(full[n].shape)}, its config implies {expected[n]}"
        for n in sorted(expected.keys() & full.keys())
        if list(full[n].shape) != list(expected[n])
    ]
    return problems


def expected_shapes(config: dict) -> dict[str, list[int]]:
    """Shapes a TP=1 model of this config has (vocab rows unpadded, as portable files store them)."""
    m, ps = ModelConfig.model_validate(config["model"]), ParScaleConfig.model_validate(config["parscale"])
    h, d, v = m.hidden_size, m.kv_channels, config["vocab_size"]
    q, kv = m.num_attention_heads * d, m.num_kv_heads * d
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not m.tie_embeddings:
        shapes["lm_head.weight"] = [v, h]
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [q, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, q],
            p + "mlp.gate_proj.weight": [m.ffn_hidden_size, h],
            p + "mlp.up_proj.weight": [m.ffn_hidden_size, h],
            p + "mlp.down_proj.weight": [h, m.ffn_hidden_size],
        }
        if m.qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": [q],
                p + "self_attn.k_proj.bias": [kv],
                p + "self_attn.v_proj.bias": [kv],
            }
        if ps.has_prefix:
            if ps.prefix_init == "normal":
                for kind in ("k", "v"):
                    shapes[p + f"self_attn.prefix.prefix_{kind}"] = [ps.streams, m.num_kv_heads, ps.prefix_len, d]
            else:
                r = ps.prefix_mlp_hidden
                shapes |= {
                    p + "self_attn.prefix.seed": [ps.streams, ps.prefix_len, r],
                    p + "self_attn.prefix.mlp.0.weight": [r, r],
                    p + "self_attn.prefix.mlp.0.bias": [r],
                    p + "self_attn.prefix.mlp.2.weight": [2 * kv, r],
                    p + "self_attn.prefix.mlp.2.bias": [2 * kv],
                }
    if ps.streams > 1:
        shapes |= {
            "model.aggregate_layer.0.weight": [h, ps.streams * h],
            "model.aggregate_layer.0.bias": [h],
            "model.aggregate_layer.2.weight": [ps.streams, h],
            "model.aggregate_layer.2.bias": [ps.streams],
        }
    return shapes


def print_inspect(directory: str) -> None:
    print(json.dumps(inspect(directory), indent=2))
