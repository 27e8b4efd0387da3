"""Reading a trainer checkpoint (``<run>/checkpoints/stepN/``) offline, in one process, for any
ZeRO stage (0-3), TP and DP size, fp32 or bf16, without unpickling code.

Each TP rank's parameters come back as full (DP-merged) fp32 tensors of that rank's slice: the fp32
master weights from the ZeRO optimizer partitions where DeepSpeed keeps them (ZeRO 1-3; bf16 runs
train those, the module holds bf16 copies), the module's weights otherwise (frozen parameters,
ZeRO 0). A folder written by ``parscale convert reshard`` holds its slices as safetensors instead.

Partition layouts, per TP rank (``mp_rank_XX``), DP size D:
- ZeRO 1/2: per optimizer group, the D partitions concatenate into one flat fp32 vector that
  holds the group's parameters in order, each followed by its alignment padding.
- ZeRO 3: every parameter is cut into D pieces of ceil(numel / D) (the last padded); each DP rank's
  flat vector holds its pieces of all parameters in order."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from ..config.job import JobConfig
from ..config.model import ModelConfig, ParScaleConfig
from ..config.run_paths import RunPaths
from ..distributed.runtime import select_deepspeed_accelerator
from . import integrity
from .optimizer_groups import group_names
from .portable import CheckpointError
from .step_folders import COMPLETE, CONFIG, RESHARDED, STATE, latest_tag


def safe_load(path: Path, mmap: bool = True) -> dict:
    """``torch.load(weights_only=True)`` with DeepSpeed's plain data classes allowed; nothing else
    in the file can run code. ``mmap``: tensors stay mapped from the file (readers that only look);
    a resume reads them into memory (training updates what it loads)."""
    select_deepspeed_accelerator("cuda" if torch.cuda.is_available() else "cpu")  # before DeepSpeed's import
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, fragment_address]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to unpickle it ({str(exc).splitlines()[-1][:200]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated ({str(exc).splitlines()[0][:200]})") from None


def find_step_folder(path: str | Path) -> Path:
    """A ``stepN`` folder from itself, a checkpoints folder (its latest complete one) or a run folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if (path / STATE).exists() or re.fullmatch(r"step\d+", path.name):
        if not (path / COMPLETE).exists():
            raise CheckpointError(f"{path}: incomplete save (no {COMPLETE} marker); use the previous checkpoint")
        return path
    for folder in (path, RunPaths.of_folder(path).checkpoints):  # where the run in ``path`` wrote them
        tag = latest_tag(folder) if folder.is_dir() else None
        if tag:
            return folder / tag
    raise CheckpointError(
        f"{path}: no trainer checkpoint (expected a stepN folder, a checkpoints folder or a run folder)"
    )


class TrainerCheckpoint:
    """One complete ``stepN`` folder; cheap to pickle (paths only). Its files are checked against
    the sizes and sha256 recorded at save first (``check_files``), so nothing damaged is read on."""

    def __init__(self, path: str | Path, check_files: bool = True):
        self.folder = find_step_folder(path)
        if check_files and (found := integrity.problems(self.folder)):
            raise CheckpointError(f"{self.folder}: damaged since it was saved: " + "; ".join(found))
        try:
            self.state = json.loads((self.folder / STATE).read_text())
            self.config = JobConfig.model_validate(yaml.safe_load((self.folder / CONFIG).read_text()))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.folder}: unreadable trainer state or config ({exc})") from None
        identity = self.state["identity"]
        self.model: ModelConfig = self.config.model
        self.parscale: ParScaleConfig = self.config.parscale
        self.vocab: int = identity["vocab_size"]
        self.tp: int = identity["parallel.tensor_parallel_size"]
        self.zero: int = identity["parallel.zero_stage"]
        self.resharded = (self.folder / RESHARDED).exists()

    def describe(self) -> dict:
        return {
            "checkpoint": str(self.folder),
            "step": self.state["step"],
            "tokens_seen": self.state["tokens_seen"],
            "tp": self.tp,
            "zero_stage": None if self.resharded else self.zero,
            "precision": self.config.parallel.precision,
            "resharded": self.resharded,
        }

    # ------------------------------------------------------------------ one TP rank

    def rank_state(self, rank: int) -> dict[str, torch.Tensor]:
        if not 0 <= rank < self.tp:
            raise CheckpointError(f"{self.folder}: TP rank {rank} out of range (TP={self.tp})")
        if self.resharded:
            path = self.folder / f"tp_rank_{rank:02d}.safetensors"
            try:
                return load_file(str(path))
            except FileNotFoundError:
                raise CheckpointError(f"{path}: not found") from None
            except Exception as exc:  # safetensors' own error types
                raise CheckpointError(f"{path}: corrupt or truncated ({exc})") from None
        if self.zero == 3:
            return self._zero3(rank)
        states = safe_load(self.folder / f"mp_rank_{rank:02d}_model_states.pt")
        module = {k: v for k, v in states["module"].items() if v is not None}  # a tied head holds None
        full = {k: v.float() for k, v in module.items()}
        if self.zero == 0:
            fp32 = (states.get("optimizer") or {}).get("fp32_groups")
            if fp32 is not None:  # bf16 at ZeRO 0: the masters, one tensor per parameter, by group
                for (names, *_), tensors in zip(
                    group_names(module.items(), self.config.optimizer, self.parscale), fp32, strict=True
                ):
                    full |= dict(zip(names, (t.float() for t in tensors), strict=True))
            return full
        return full | self._zero12(rank, states["param_shapes"])

    def _optim_files(self, rank: int) -> list[dict]:
        files = sorted(
            self.folder.glob(f"*zero_pp_rank_*_mp_rank_{rank:02d}_optim_states.pt"),
            key=lambda p: int(re.search(r"zero_pp_rank_(\d+)_", p.name).group(1)),
        )
        if not files:
            raise CheckpointError(f"{self.folder}: no ZeRO optimizer partitions for TP rank {rank}")
        parts = [safe_load(f)["optimizer_state_dict"] for f in files]
        count = parts[0]["partition_count"]
        count = max(count) if isinstance(count, list) else count
        if count != len(files):
            raise CheckpointError(f"{self.folder}: TP rank {rank} needs {count} ZeRO partitions, found {len(files)}")
        return parts

    def _zero12(self, rank: int, param_shapes: list[dict]) -> dict[str, torch.Tensor]:
        parts = self._optim_files(rank)
        out = {}
        for group, shapes in enumerate(param_shapes):
            flat = torch.cat([p["single_partition_of_fp32_groups"][group] for p in parts])
            # DeepSpeed's BF16_Optimizer (bf16 ZeRO 1 with fp32 gradient accumulation) records none:
            # it pads only the end of each group
            paddings = parts[0].get("param_alignment_paddings")
            paddings = paddings[group] if paddings is not None else [0] * len(shapes)
            offset = 0
            for (name, shape), pad in zip(shapes.items(), paddings, strict=True):
                numel = math.prod(shape)
                if offset + numel > flat.numel():
                    raise CheckpointError(f"{self.folder}: TP rank {rank} partitions end before {name}")
                out[name] = flat.narrow(0, offset, numel).view(shape).clone()
                offset += numel + pad
        return out

    def _zero3(self, rank: int) -> dict[str, torch.Tensor]:
        parts = self._optim_files(rank)
        dp = len(parts)
        models = [safe_load(self.folder / f"zero_pp_rank_{d}_mp_rank_{rank:02d}_model_states.pt") for d in range(dp)]
        shapes = {k: v for group in models[0]["param_shapes"] for k, v in group.items()}
        flats = [torch.cat(list(p["fp32_flat_groups"])) for p in parts]
        out, offset = {}, 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            piece = math.ceil(numel / dp)
            if offset + piece > flats[0].numel():
                raise CheckpointError(f"{self.folder}: TP rank {rank} partitions end before {name}")
            out[name] = torch.cat([f.narrow(0, offset, piece) for f in flats])[:numel].view(shape).clone()
            offset += piece
        frozen = models[0].get("frozen_param_shapes") or {}
        for name, shape in frozen.items():
            pieces = [m["frozen_param_fragments"][name].reshape(-1) for m in models]
            out[name] = torch.cat(pieces)[: math.prod(shape)].view(shape).float()
        missing = [k for k, v in models[0]["module"].items() if v is not None and k not in out]
        if missing:
            raise CheckpointError(f"{self.folder}: TP rank {rank} has no weights for {', '.join(missing[:5])}")
        return out
