"""The portable checkpoint: a folder holding ``model.safetensors`` (full, unsharded weights),
``config.json`` (model and ParScale sections, vocabulary sizes, provenance) and
``tokenizer.model``. Nothing is unpickled when loading, so an untrusted folder cannot run code.
It is written to a temporary sibling folder and renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.model import ModelConfig, ParScaleConfig
from ..errors import JobError
from ..utils.fs import read_format_json

FORMAT = "parscale-portable/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class CheckpointError(JobError):
    pass


def save_portable(model, directory: str | Path, tokenizer: str | Path | None = None, meta: dict | None = None) -> Path:
    """Write a TP=1 model (``ParScaleLM``) as a portable checkpoint."""
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise CheckpointError("save_portable takes a TP=1 model; consolidate TP shards first")
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if v is not None}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "model": model.config.model_dump(mode="json"),
        "parscale": model.parscale.model_dump(mode="json"),
        "vocab_size": model.vocab_size,
        "padded_vocab_size": model.padded_vocab_size,
        **(meta or {}),
    }
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def read_config(directory: str | Path) -> dict:
    return read_format_json(Path(directory) / CONFIG, FORMAT, CheckpointError,
                            f"is {directory} a portable checkpoint?")


def load_portable(directory: str | Path, dtype: torch.dtype = torch.float32):
    """(model, config dict) from a portable checkpoint; needs megatron-core's groups (TP=1) up."""
    from ..model import ParScaleLM

    config = read_config(directory)
    model = ParScaleLM(ModelConfig.model_validate(config["model"]), ParScaleConfig.model_validate(config["parscale"]),
                       config["vocab_size"], params_dtype=dtype)
    path = Path(directory) / WEIGHTS
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {Path(directory) / CONFIG}: {exc}") from None
    return model.to(dtype), config
