"""The portable checkpoint: a folder holding ``model.safetensors`` (full, unsharded weights),
``config.json`` (model and ParScale sections, vocabulary sizes, provenance, the tokenizer's record)
and the tokenizer's files (``tokenizer.model``, or ``tokenizer.json`` with its
``tokenizer_config.json``). Nothing is unpickled when loading, so an untrusted folder cannot run
code. It is written to a temporary sibling folder and renamed into place."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_prep.text_tokenizer import TextTokenizer, TokenizerError
from data_prep.tokenizer import TokenizerInfo, copy_files, describe, open_recorded

from ..config.model import ModelConfig, ParScaleConfig
from ..config.run_paths import CHECKPOINTS, PORTABLE
from ..errors import UserError
from ..model import ParScaleLM
from ..model.param_groups import VOCAB_ROWS
from ..utils.fs import file_sha256, out_of_space, read_format_json, staged_dir
from . import step_folders
from .sharding import load_full_state

FORMAT = "parscale-portable/1"
PORTABLE_KIND = "portable checkpoint"  # what staged_dir lets a later portable replace
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class CheckpointError(UserError):
    pass


def save_portable(
    model,
    directory: str | Path,
    tokenizer: str | Path | None = None,
    meta: dict | None = None,
    tokenizer_info: TokenizerInfo | None = None,
) -> Path:
    """Write a TP=1 model (``ParScaleLM``) as a portable checkpoint."""
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise CheckpointError("save_portable takes a TP=1 model; use save_portable_state with gathered weights")
    state = {k: v.detach().contiguous().cpu() for k, v in model.named_parameters()}
    return save_portable_state(
        state, model.config, model.parscale, model.vocab_size, directory, tokenizer, meta, tokenizer_info
    )


def save_portable_state(
    state: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    parscale_cfg: ParScaleConfig,
    vocab_size: int,
    directory: str | Path,
    tokenizer: str | Path | None = None,
    meta: dict | None = None,
    tokenizer_info: TokenizerInfo | None = None,
) -> Path:
    """Write full weights (e.g. gathered from a TP/ZeRO run) as a portable checkpoint; the
    vocabulary rows are trimmed to the real vocabulary (padding depends on the TP it loads at).
    ``tokenizer``: a tokenizer file or a folder holding one (prepared data, another checkpoint, a
    Hugging Face folder): its files are copied in and described in ``config.json`` (``tokenizer_info``
    when the source has a record, e.g. the end-of-document id its data was prepared with)."""
    directory = Path(directory)
    state = {k: (v[:vocab_size] if k in VOCAB_ROWS else v).contiguous() for k, v in state.items()}
    config = {
        "format": FORMAT,
        "model": model_cfg.identity(),
        "parscale": parscale_cfg.model_dump(mode="json"),
        "vocab_size": vocab_size,
        **(meta or {}),
    }
    with staged_dir(directory, PORTABLE_KIND) as tmp:
        try:
            save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        except (SafetensorError, OSError) as exc:  # safetensors reports a full disk as "os error 28"
            if out_of_space(exc, directory) or "os error 28" in str(exc):
                raise OSError(errno.ENOSPC, "No space left on device", str(directory / WEIGHTS)) from exc
            raise
        config["sha256"] = {WEIGHTS: file_sha256(tmp / WEIGHTS)}
        if tokenizer is not None:
            copy_files(tokenizer, tmp)
            info = tokenizer_info or describe(tmp)
            if info.vocab_size > vocab_size:
                raise CheckpointError(
                    f"{tokenizer}: a tokenizer of {info.vocab_size} ids for a model of {vocab_size} vocabulary rows"
                )
            config["tokenizer"] = info.to_dict()
            config["sha256"] |= info.files
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> dict:
    """``config.json`` of a portable checkpoint; a trainer checkpoint folder or a Hugging Face
    folder given instead is named, with the ``parscale convert`` command that makes one from it."""
    try:
        return read_format_json(
            Path(directory) / CONFIG, FORMAT, CheckpointError, f"is {directory} a portable checkpoint?"
        )
    except CheckpointError as exc:
        raise CheckpointError(_not_portable(Path(directory)) or str(exc)) from None


def _not_portable(directory: Path) -> str | None:
    """What a folder that holds no portable checkpoint is, and how to make one from it (None: unknown)."""
    marks = (step_folders.LATEST, step_folders.STATE, CHECKPOINTS)  # a checkpoints folder, a stepN one, a run folder
    if any((directory / name).exists() for name in marks) or any(directory.glob("step*/")):
        export = directory / PORTABLE
        also = f" (or give {export}, the one the run exported at its end)" if (export / CONFIG).is_file() else ""
        return (
            f"{directory}: a trainer checkpoint folder (latest / stepN / checkpoints/), not a portable "
            f"checkpoint; run `parscale convert consolidate {directory} DST` and give DST{also}"
        )
    try:
        model_type = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    if model_type is None:
        return None
    return (
        f"{directory}: a Hugging Face folder (model_type {model_type!r}), not a portable checkpoint; "
        f"run `parscale convert import-hf {directory} DST` and give DST"
    )


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


def tokenizer_info(directory: str | Path) -> TokenizerInfo | None:
    """The record of the tokenizer the checkpoint carries (a checkpoint written before records
    existed: its ``tokenizer.model`` described), None when it carries none."""
    recorded = read_config(directory).get("tokenizer")
    if recorded is not None:
        return TokenizerInfo.from_dict(recorded)
    if (Path(directory) / TOKENIZER).is_file():
        verify_recorded(directory, TOKENIZER)
        return describe(Path(directory) / TOKENIZER)
    return None


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The checkpoint's tokenizer, its files checked against their recorded sha256 first."""
    info = tokenizer_info(directory)
    if info is None:
        raise CheckpointError(
            f"{directory}: the checkpoint carries no tokenizer (an import of a folder without one?); copy the "
            "model's tokenizer files in and convert again, or pass one to the tool that wrote it"
        )
    for name in info.files:
        if not (Path(directory) / name).is_file():
            raise CheckpointError(f"{Path(directory) / name}: not found (recorded in {Path(directory) / CONFIG})")
        verify_recorded(directory, name)
    try:
        return open_recorded(directory, info)
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None


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
    except UserError as exc:
        raise CheckpointError(f"weights do not match the config: {exc}") from None
    return model.to(dtype), config
