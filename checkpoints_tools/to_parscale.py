"""``parscale convert to-parscale``: a dense portable checkpoint -> a ParScale one (P streams).

The backbone is copied bit for bit; each layer gains fresh prefixes and the model a fresh
aggregator (``--prefix-init``, ``--seed``). Going from a ParScale checkpoint with P streams to a
larger P only with ``--allow-more-streams``: the first P streams keep their prefixes, the new ones
and the aggregator (its input width changes) start fresh. Verification: the converted backbone,
run as a dense model, reproduces the source's logits on a fixed input (ParScale's prefixes change
the output by design, so that is what can be equal), tolerance printed."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.checkpoint.portable import (
    PORTABLE_KIND,
    CheckpointError,
    load_tokenizer,
    read_config,
    read_weights,
    save_portable_state,
    tokenizer_info,
)
from pipeline.checkpoint.sharding import load_full_state
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.model.param_groups import is_prefix, parscale_parameter
from pipeline.utils.fs import claim_target

from . import logits_check


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not parscale_parameter(k)}


def convert(
    source: str | Path,
    target: str | Path,
    parscale: ParScaleConfig,
    seed: int = 0,
    allow_more_streams: bool = False,
    verify: bool = True,
) -> dict:
    source, target = Path(source), Path(target)
    claim_target(target, PORTABLE_KIND, (source,))
    config = read_config(source)
    old = ParScaleConfig.model_validate(config["parscale"])
    if old.streams > 1 and not allow_more_streams:
        raise CheckpointError(
            f"{source}: already ParScale with P={old.streams}; pass --allow-more-streams to go to P={parscale.streams}"
        )
    if old.streams > 1 and parscale.streams <= old.streams:
        raise CheckpointError(f"{source}: has P={old.streams}; --streams must be larger, got {parscale.streams}")
    if parscale.streams < 2:
        raise CheckpointError("--streams must be at least 2 (P=1 is the dense model itself)")
    model_cfg = ModelConfig.model_validate(config["model"])
    state = read_weights(source)
    carried = _backbone(state)
    if (
        old.streams > 1
        and old.prefix_init == parscale.prefix_init == "normal"
        and old.prefix_len == parscale.prefix_len
    ):
        carried |= {k: v for k, v in state.items() if is_prefix(k)}  # the first P streams, widened below
    with single_process(seed=seed):
        torch.manual_seed(seed)
        # the prefixes and aggregator drawn between the backbone's layers, as conversions always made them
        model = ParScaleLM(model_cfg, parscale, config["vocab_size"], parscale_draws="shared")
        fresh = dict(model.named_parameters())
        for name, value in list(carried.items()):
            if is_prefix(name):  # widen [P_old, ...] to [P_new, ...] with the fresh streams appended
                carried[name] = torch.cat([value, fresh[name].detach()[value.shape[0] :]])
        new = load_full_state(model, carried, str(source), allow_new_parscale=True)
        out_state = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = {"source": str(source), "target": str(target), "streams": parscale.streams, "new_tensors": len(new)}
    if verify:
        vocab, dense = config["vocab_size"], ParScaleConfig()
        result["verified"] = logits_check.check(
            logits_check.FullWeights(_backbone(state), model_cfg, dense, vocab),
            logits_check.FullWeights(_backbone(out_state), model_cfg, dense, vocab),
            "backbone run as a dense model",
        )
    info = tokenizer_info(source)
    if info is not None:
        load_tokenizer(source)  # its files checked against their recorded sha256 before they are copied on
    meta = {k: config[k] for k in ("step", "tokens_seen", "seq_len") if k in config} | {"converted_from": str(source)}
    tokenizer = source if info is not None else None
    save_portable_state(out_state, model_cfg, parscale, config["vocab_size"], target, tokenizer, meta, info)
    return result
