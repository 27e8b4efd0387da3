"""The portable checkpoint: a folder holding ``model.safetensors`` (full, unsharded weights),
``config.json`` (model and ParScale sections, vocabulary sizes, provenance) and
``tokenizer.model``. Nothing is unpickled when loading, so an untrusted folder cannot run code.
It is written to a temporary sibling folder and renamed into place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.model import ModelConfig, ParScaleConfig
from ..errors import JobError
from ..model import ParScaleLM
from ..model.param_groups import VOCAB_ROWS
from ..utils.fs import file_sha256, read_format_json, staged_dir
from .sharding import load_full_state

FORMAT = "parscale-portable/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class CheckpointError(JobError):
    pass


def save_portable(model, directory: str | Path, tokenizer: str | Path | None = None, meta: dict | None = None) -> Path:
    """Write a TP=1 model (``ParScaleLM``) as a portable checkpoint."""
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise CheckpointError("save_portable takes a TP=1 model; use save_portable_state with gathered weights")
    state = {k: v.detach().contiguous().cpu() for k, v in model.named_parameters()}
    return save_portable_state(state, model.config, model.parscale, model.vocab_size, directory, tokenizer, meta)


def save_portable_state(
    state: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    parscale_cfg: ParScaleConfig,
    vocab_size: int,
    directory: str | Path,
    tokenizer: str | Path | None = None,
    meta: dict | None = None,
) -> Path:
    """Write full weights (e.g. gathered from a TP/ZeRO run) as a portable checkpoint; the
    vocabulary rows are trimmed to the real vocabulary (padding depends on the TP it loads at)."""
    directory = Path(directory)
    state = {k: (v[:vocab_size] if k in VOCAB_ROWS else v).contiguous() for k, v in state.items()}
    config = {
        "format": FORMAT,
        "model": model_cfg.identity(),
        "parscale": parscale_cfg.model_dump(mode="json"),
        "vocab_size": vocab_size,
        **(meta or {}),
    }
    with staged_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
        config["sha256"] = {name: file_sha256(tmp / name) for name in (WEIGHTS, TOKENIZER) if (tmp / name).exists()}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> dict:
    return read_format_json(Path(directory) / CONFIG, FORMAT, CheckpointError, f"is {directory} a portable checkpoint?")


def verify_recorded(directory: str | Path, name: str) -> Path:
    """``directory/name``, refused if its sha256 differs from the one ``config.json`` recorded when
    it was written (a folder from before checksums, or a file not recorded, passes)."""
    directory = Path(directory)
    path = directory / name
    expected = read_config(directory).get("sha256", {}).get(name)
    if expected is not None and path.is_file() and file_sha256(path) != expected:
        raise CheckpointError(
            f"{path}: sha256 differs from the one recorded in {directory / CONFIG} when it was "
            "written (changed or corrupt since); restore it, or export the checkpoint again"
        )
    return path


def tokenizer_file(directory: str | Path) -> Path:
    """The checkpoint's ``tokenizer.model``, checked against its recorded sha256."""
    path = Path(directory) / TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; the checkpoint carries no tokenizer")
    return verify_recorded(directory, TOKENIZER)


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights, after their sha256 is checked against the one recorded at write."""
    path = verify_recorded(directory, WEIGHTS)
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated ({exc})") from None


def load_portable(directory: str | Path, dtype: torch.dtype = torch.float32):
    """(model, config dict) from a portable checkpoint, at the TP of megatron-core's groups (up)."""
    from megatron.core import parallel_state as ps

    config = read_config(directory)
    model = ParScaleLM(
        ModelConfig.model_validate(config["model"]),
        ParScaleConfig.model_validate(config["parscale"]),
        config["vocab_size"],
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        params_dtype=dtype,
    )
    weights = read_weights(directory)  # its own errors name the file
    try:
        load_full_state(model, weights, f"{Path(directory) / WEIGHTS} (with {CONFIG})")
    except JobError as exc:
        raise CheckpointError(f"weights do not match the config: {exc}") from None
    return model.to(dtype), config
