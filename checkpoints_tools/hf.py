"""Hugging Face layouts <-> portable checkpoints.

- ``qwen2``: a dense ``Qwen2ForCausalLM`` folder (config.json + model.safetensors). Our parameter
  names are Qwen2's, so weights map one to one.
- ``qwen2_parscale``: the layout of the released ParScale checkpoints (``model_type``
  ``qwen2_parscale``; config fields ``parscale_n``, ``parscale_n_tokens``, ``parscale_attn_smooth``;
  per-layer ``self_attn.prefix_k``/``prefix_v``; ``model.aggregate_layer.{0,2}`` on the same
  feature-major input order). Their modeling code is loaded with ``trust_remote_code`` and is not
  part of this project; the layout is written so it loads it.

Tokenizer files found next to the weights go along as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.checkpoint.portable import CheckpointError, read_config, read_weights, save_portable_state
from pipeline.config.model import ModelConfig, ParScaleConfig

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "generation_config.json")


def _rename(name: str, to_hf: bool) -> str:
    ours, theirs = ".self_attn.prefix.prefix_", ".self_attn.prefix_"
    return name.replace(ours, theirs) if to_hf else name.replace(theirs, ours)


def hf_config(model: ModelConfig, ps: ParScaleConfig, vocab: int) -> dict:
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
        "hidden_size": model.hidden_size, "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_kv_heads, "head_dim": model.kv_channels,
        "max_position_embeddings": model.max_seq_len, "rms_norm_eps": model.norm_eps, "rope_theta": model.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_base},
        "tie_word_embeddings": model.tie_embeddings, "hidden_act": "silu", "torch_dtype": "float32",
        "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": model.init_std,
    }
    if ps.streams > 1:
        if ps.prefix_init != "normal":
            raise CheckpointError("the official ParScale layout holds prefix_k/prefix_v: convert an 'mlp' prefix first")
        config |= {"architectures": ["Qwen2ParScaleForCausalLM"], "model_type": "qwen2_parscale",
                   "parscale_n": ps.streams, "parscale_n_tokens": ps.prefix_len, "parscale_attn_smooth": ps.eps}
    return config


def export_hf(source: str | Path, target: str | Path) -> Path:
    source, target = Path(source), Path(target)
    meta = read_config(source)
    model, ps = ModelConfig.model_validate(meta["model"]), ParScaleConfig.model_validate(meta["parscale"])
    if not model.qkv_bias:
        raise CheckpointError(f"{source}: Qwen2 layouts have QKV biases; this model has none")
    state = {_rename(k, True): v for k, v in read_weights(source).items()}
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(model, ps, meta["vocab_size"]), indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, tmp / name)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def import_hf(source: str | Path, target: str | Path) -> Path:
    source, target = Path(source), Path(target)
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source / 'config.json'}: unreadable ({exc})") from None
    kind = config.get("model_type")
    if kind not in ("qwen2", "qwen2_parscale"):
        raise CheckpointError(f"{source / 'config.json'}: model_type {kind!r}; import-hf reads qwen2 and qwen2_parscale")
    rope = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    model = ModelConfig(
        num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"], num_attention_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        head_dim=config.get("head_dim"), vocab_size=config["vocab_size"],
        max_seq_len=config.get("max_position_embeddings", 4096), rope_base=rope, qkv_bias=True,
        tie_embeddings=config.get("tie_word_embeddings", False), norm_eps=config.get("rms_norm_eps", 1e-6),
    )
    ps = ParScaleConfig(streams=config.get("parscale_n", 1), prefix_len=config.get("parscale_n_tokens", 48),
                        eps=config.get("parscale_attn_smooth", 0.1))
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{source}: no *.safetensors weights (pickled .bin files are not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= {_rename(k, False): v for k, v in load_file(str(f)).items()}
    if model.tie_embeddings:
        state.pop("lm_head.weight", None)
    tokenizer = source / "tokenizer.model"
    out = save_portable_state(state, model, ps, config["vocab_size"], target,
                              tokenizer if tokenizer.exists() else None, {"imported_from": str(source)})
    for name in TOKENIZER_FILES[1:]:
        if (source / name).exists():
            shutil.copyfile(source / name, out / name)
    return out
