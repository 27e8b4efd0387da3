"""Hugging Face model types <-> portable checkpoints.

- ``qwen2``: a dense ``Qwen2ForCausalLM`` folder. Parameter names are ours; Qwen2 always has QKV
  biases, so a bias-free model exports zeros (exactly the same function).
- ``llama``: a dense ``LlamaForCausalLM`` folder. Same names; its ``attention_bias`` puts a bias
  on o_proj too, so a model with QKV biases exports a zero o_proj bias, and an import refuses a
  non-zero one (our attention has none), as it refuses ``mlp_bias``.
- ``qwen2_parscale``: the format of the released ParScale checkpoints (``model_type``
  ``qwen2_parscale``; ``parscale_n``, ``parscale_n_tokens``, ``parscale_attn_smooth``; per-layer
  ``self_attn.prefix_k``/``prefix_v``; ``model.aggregate_layer.{0,2}`` on the same feature-major
  input order). Their modeling code needs ``trust_remote_code`` and is not run here.

Verification at run time: for qwen2/llama, ``transformers`` loads the Hugging Face side and its
logits are compared with ours (tolerance printed); for qwen2_parscale the written tensors are read
back and compared exactly. Tokenizers travel both ways: an import copies the folder's tokenizer
files into the portable checkpoint (recorded there); an export writes one that ``AutoTokenizer``
loads with the model's ids (``hf_tokenizer``), the special ids in ``config.json`` and a
``generation_config.json``. Only safetensors weights are read (pickled ``.bin`` files are refused)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from data_prep.text_tokenizer import TokenizerError
from data_prep.tokenizer import describe, locate
from pipeline.checkpoint.portable import (
    PORTABLE_KIND,
    CheckpointError,
    read_config,
    read_weights,
    save_portable_state,
    tokenizer_info,
)
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.utils.fs import claim_target, staged_dir

from . import hf_tokenizer, logits_check
from .inspect_ckpt import expected_shapes

EXPORT_KIND = "Hugging Face export"
MODEL_TYPES = ("qwen2", "llama", "qwen2_parscale")
_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen2_parscale": "Qwen2ParScaleForCausalLM"}


def _rename(name: str, to_hf: bool) -> str:
    ours, theirs = ".self_attn.prefix.prefix_", ".self_attn.prefix_"
    return name.replace(ours, theirs) if to_hf else name.replace(theirs, ours)


def _layer_prefixes(model: ModelConfig) -> list[str]:
    return [f"model.layers.{i}.self_attn." for i in range(model.num_layers)]


def hf_config(model_type: str, model: ModelConfig, ps: ParScaleConfig, vocab: int) -> dict:
    config = {
        "architectures": [_ARCH[model_type]],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_kv_heads,
        "head_dim": model.kv_channels,
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_base},
        "tie_word_embeddings": model.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "attention_dropout": 0.0,
        "initializer_range": model.init_std,
    }
    if model_type == "llama":
        return config | {"attention_bias": model.qkv_bias, "mlp_bias": False}
    config["use_sliding_window"] = False
    if model_type == "qwen2_parscale":
        if ps.prefix_init != "normal":
            raise CheckpointError("the official ParScale format holds prefix_k/prefix_v: convert an 'mlp' prefix first")
        config |= {
            "parscale_n": ps.streams,
            "parscale_n_tokens": ps.prefix_len,
            "parscale_attn_smooth": ps.eps,
            "auto_map": dict(OFFICIAL_AUTO_MAP),
        }
    return config


def _pick_model_type(model_type: str, model: ModelConfig, ps: ParScaleConfig, tokenizer_kind: str | None) -> str:
    """``auto``: qwen2_parscale for P > 1; else qwen2 for a model with QKV biases and a Hugging Face
    tokenizer, else llama (transformers loads a qwen2 folder's tokenizer as Qwen2's byte-level BPE
    whatever its tokenizer_config says, so a sentencepiece model goes out as llama)."""
    if ps.single_prefix:
        raise CheckpointError("no Hugging Face model type holds the one-stream prefix control (parscale.single_prefix)")
    if model_type == "auto":
        if ps.streams > 1:
            return "qwen2_parscale"
        return "qwen2" if model.qkv_bias and tokenizer_kind != "sentencepiece" else "llama"
    if (model_type == "qwen2_parscale") != (ps.streams > 1):
        raise CheckpointError(
            f"model_type {model_type} is for {'ParScale' if model_type == 'qwen2_parscale' else 'dense'} models; "
            f"this one has P={ps.streams}"
        )
    return model_type


def _hf_state(model_type: str, model: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {_rename(k, True): v for k, v in state.items()}
    for p in _layer_prefixes(model):
        if model_type != "llama" and not model.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                out[p + f"{proj}.bias"] = torch.zeros(state[p + f"{proj}.weight"].shape[0])
        if model_type == "llama" and model.qkv_bias:
            out[p + "o_proj.bias"] = torch.zeros(model.hidden_size)
    return out


def _transformers_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def _compare_with_transformers(hf_dir: Path, ours: logits_check.FullWeights, what: str) -> str:
    ids = logits_check.fixed_input(ours.vocab)
    theirs, mine = _transformers_logits(hf_dir, ids), logits_check.logits(ours, ids)
    diff = (theirs - mine).abs().max().item()
    tolerance = 1e-4 * max(1.0, theirs.abs().max().item())
    message = f"{what}: transformers vs ours, logits on a fixed [2, 16] input: max |diff| {diff:.2e} (tolerance {tolerance:.1e})"
    if diff > tolerance:
        raise CheckpointError(f"verification failed: {message}")
    return message


def _copy_tensors_check(written: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> str:
    if written.keys() != expected.keys() or any(not torch.equal(written[k], expected[k]) for k in expected):
        raise CheckpointError(f"verification failed: {what}: the written tensors differ from the source's")
    return f"{what}: every tensor read back equal to the source's (exact; the official modeling code is not run)"


def export_hf(
    source: str | Path,
    target: str | Path,
    model_type: str = "auto",
    verify: bool = True,
    tokenizer_sample: list[str] | None = None,
) -> dict:
    """``tokenizer_sample``: more texts the exported tokenizer must encode as the checkpoint's does."""
    source, target = Path(source), Path(target)
    claim_target(target, EXPORT_KIND, (source,))
    meta = read_config(source)
    model, ps = ModelConfig.model_validate(meta["model"]), ParScaleConfig.model_validate(meta["parscale"])
    info = tokenizer_info(source)
    model_type = _pick_model_type(model_type, model, ps, info.kind if info is not None else None)
    weights = read_weights(source)
    state = _hf_state(model_type, model, weights)
    result = {"source": str(source), "target": str(target), "model_type": model_type}
    with staged_dir(target, EXPORT_KIND, (source,)) as out:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        special = hf_tokenizer.special_ids(source) if info is not None else {}
        config = hf_config(model_type, model, ps, meta["vocab_size"]) | special
        # config.json before the tokenizer: AutoTokenizer picks the tokenizer's class by the model type too
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if info is not None:
            hf_tokenizer.export(source, info, out, tokenizer_sample, model_type)
            generation = {"_from_model_config": True, "do_sample": False, **special}
            (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            result["tokenizer"] = f"{info.kind} {info.path}: AutoTokenizer gives the checkpoint's ids (checked)"
        else:
            result["tokenizer"] = "none (the checkpoint carries no tokenizer)"
        if not verify:
            result["verified"] = "skipped (--no-verify)"
        elif model_type == "qwen2_parscale":
            result["verified"] = _copy_tensors_check(load_file(str(out / "model.safetensors")), state, "exported")
        else:
            ours = logits_check.FullWeights(weights, model, ps, meta["vocab_size"])
            result["verified"] = _compare_with_transformers(out, ours, "exported")
    return result


def _read_hf(source: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source / 'config.json'}: unreadable ({exc})") from None
    if config.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{source / 'config.json'}: model_type {config.get('model_type')!r}; import-hf reads {', '.join(MODEL_TYPES)}"
        )
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{source}: no *.safetensors weights (pickled .bin files are not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state |= load_file(str(f))
        except Exception as exc:  # safetensors' own error types
            raise CheckpointError(f"{f}: corrupt or truncated ({exc})") from None
    return config, state


#: where transformers finds the official ParScale classes (trust_remote_code): the two module files
#: of the official ParScale release, copied next to config.json (the README's "Loading an export")
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_qwen2_parscale.Qwen2ParScaleConfig",
    "AutoModelForCausalLM": "modeling_qwen2_parscale.Qwen2ParScaleForCausalLM",
}

#: what the official ParScale modeling code assumes for a key its config.json leaves out
OFFICIAL_DEFAULTS = {"parscale_n_tokens": 48, "parscale_attn_smooth": 0.01}


#: config.json keys that change what a model computes, with the values that change nothing; any
#: other value is something this pipeline does not implement, so the import refuses it by name
NEUTRAL = {
    "rope_scaling": (None,),
    "use_sliding_window": (None, False),
    "hidden_act": ("silu",),
    "pretraining_tp": (None, 1),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
    "partial_rotary_factor": (None, 1, 1.0),
    "use_qk_norm": (None, False),
    "qk_layernorm": (None, False),
}


def unimplemented(config: dict) -> list[str]:
    """``key=value`` for each setting of ``config`` (a config.json) that changes the model's meaning
    and is not implemented here."""
    found = [
        f"{key}={config[key]!r}" for key, neutral in NEUTRAL.items() if key in config and config[key] not in neutral
    ]
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        found.append(f"rope_parameters.rope_type={rope_type!r}")
    return found


def _our_configs(config: dict, source: Path) -> tuple[ModelConfig, ParScaleConfig]:
    if found := unimplemented(config):
        raise CheckpointError(
            f"{source / 'config.json'}: {', '.join(found)}: changes what the model computes and is "
            "not implemented here (importing it would give another model's logits)"
        )
    kind = config["model_type"]
    if kind == "llama" and config.get("mlp_bias"):
        raise CheckpointError(f"{source / 'config.json'}: mlp_bias is true; this model family has no MLP biases")
    rope = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    try:
        model = ModelConfig(
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            ffn_hidden_size=config["intermediate_size"],
            num_attention_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            head_dim=config.get("head_dim"),
            vocab_size=config["vocab_size"],
            max_seq_len=config.get("max_position_embeddings", 4096),
            rope_base=rope,
            qkv_bias=kind != "llama" or bool(config.get("attention_bias")),
            tie_embeddings=config.get("tie_word_embeddings", False),
            norm_eps=config.get("rms_norm_eps", 1e-6),
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source / 'config.json'}: {exc}") from None
    ps = ParScaleConfig(
        streams=config.get("parscale_n", 1),
        prefix_len=config.get("parscale_n_tokens", OFFICIAL_DEFAULTS["parscale_n_tokens"]),
        eps=config.get("parscale_attn_smooth", OFFICIAL_DEFAULTS["parscale_attn_smooth"]),
    )
    return model, ps


def _source_tokenizer(where: str | Path, config: dict, source: Path):
    """(tokenizer source, its record) of an import: the folder's own tokenizer files (or
    ``--tokenizer``), the end of document its ``eos_token``, else the ``eos_token_id`` of its
    config.json; (None, None) when the folder has none and none is given."""
    try:
        locate(where)
    except TokenizerError:
        if Path(where) != source:
            raise CheckpointError(f"--tokenizer: {where}: holds no tokenizer") from None
        return None, None
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    try:
        info = describe(where)
    except TokenizerError:
        if eos is None or locate(where)[0] != "hf":
            raise
        # no end-of-document token named by the tokenizer: the model's eos_token_id
        info = describe(where, Tokenizer.from_file(str(locate(where)[1])).id_to_token(eos))
    if info.vocab_size > config["vocab_size"]:
        raise CheckpointError(
            f"{where}: a tokenizer of {info.vocab_size} ids for a model of {config['vocab_size']} vocabulary rows"
        )
    return Path(where), info


def import_hf(source: str | Path, target: str | Path, verify: bool = True, tokenizer: str | Path | None = None) -> dict:
    """``tokenizer``: where the tokenizer is when the model folder has none (a file or folder)."""
    source, target = Path(source), Path(target)
    claim_target(target, PORTABLE_KIND, (source,))
    config, hf_state = _read_hf(source)
    model, ps = _our_configs(config, source)
    state = {_rename(k, False): v.float() for k, v in hf_state.items()}
    for p in _layer_prefixes(model):
        bias = state.pop(p + "o_proj.bias", None)
        if bias is not None and bias.abs().max() > 0:
            raise CheckpointError(f"{source}: {p}o_proj.bias is non-zero; this model family has no o_proj bias")
    if model.tie_embeddings:
        state.pop("lm_head.weight", None)
    expected = expected_shapes(
        {"model": model.model_dump(), "parscale": ps.model_dump(), "vocab_size": config["vocab_size"]}
    )
    if state.keys() != expected.keys():
        pickled = sorted(p.name for p in source.glob("*.bin"))
        hint = (
            f"; it also holds pickled weights ({', '.join(pickled[:3])}), which are never read: save the model "
            "with safe_serialization=True, or convert those files to safetensors"
            if pickled
            else ""
        )
        raise CheckpointError(
            f"{source}: tensors do not match its config.json (missing "
            f"{sorted(expected.keys() - state.keys())[:4]}, unexpected {sorted(state.keys() - expected.keys())[:4]})"
            f"{hint}"
        )
    result = {"source": str(source), "target": str(target), "model_type": config["model_type"]}
    tokenizer, info = _source_tokenizer(tokenizer or source, config, source)
    result["tokenizer"] = (
        info.describe() if info is not None else "none found (generate and eval need one: --tokenizer)"
    )
    with staged_dir(target, PORTABLE_KIND, (source,)) as out:
        save_portable_state(
            state, model, ps, config["vocab_size"], out, tokenizer, {"imported_from": str(source)}, info
        )
        if not verify:
            result["verified"] = "skipped (--no-verify)"
        elif config["model_type"] == "qwen2_parscale":
            result["verified"] = _copy_tensors_check(read_weights(out), state, "imported")
        else:
            ours = logits_check.FullWeights(read_weights(out), model, ps, config["vocab_size"])
            result["verified"] = _compare_with_transformers(source, ours, "imported")
    return result
