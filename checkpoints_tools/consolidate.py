"""``parscale convert consolidate``: a trainer checkpoint (DeepSpeed ZeRO 0-3, any TP and DP, fp32
or bf16) -> a portable checkpoint with full fp32 weights (bf16 runs give their fp32 masters).

DeepSpeed's ``zero_to_fp32`` merges the ZeRO partitions of one TP rank and refuses TP > 1; here
each TP rank is merged over DP first and the TP slices are then joined along their partition
dimension. Verified: the source run at its own TP (one local process per TP rank) and the result
at TP=1 give the same logits; the result is written only after that."""

from __future__ import annotations

from pathlib import Path

from data_prep.manifest import ManifestError, read_manifest
from data_prep.text_tokenizer import TokenizerError
from data_prep.tokenizer import TokenizerInfo, locate
from pipeline.checkpoint import tp_partition
from pipeline.checkpoint.portable import PORTABLE_KIND, CheckpointError, save_portable_state
from pipeline.checkpoint.trainer_ckpt import TrainerCheckpoint
from pipeline.data.loader import dataset_entries
from pipeline.utils.fs import claim_target, staged_dir

from . import logits_check


def tokenizer_of(ck: TrainerCheckpoint, override: str | Path | None) -> tuple[Path, TokenizerInfo | None]:
    """The tokenizer to ship: ``override`` (a file or folder), or the run's prepared data's, with
    the record its data was prepared with."""
    if override:
        try:
            locate(override)
        except TokenizerError as exc:
            raise CheckpointError(f"--tokenizer: {exc}") from None
        return Path(override), None
    data = Path(dataset_entries(ck.config)[0].path)
    try:
        info = TokenizerInfo.from_dict(read_manifest(data)["tokenizer"])
    except ManifestError as exc:
        raise CheckpointError(f"{exc}; the run's data folder moved? pass --tokenizer") from None
    if not (data / info.path).is_file():
        raise CheckpointError(
            f"{data / info.path}: tokenizer not found (the run's data folder moved?); pass --tokenizer"
        )
    return data, info


def consolidate(
    source: str | Path, target: str | Path, tokenizer: str | Path | None = None, verify: bool = True
) -> dict:
    claim_target(Path(target), PORTABLE_KIND, (source,))  # before the work: refused targets cost nothing
    ck = TrainerCheckpoint(source)
    tok, tok_info = tokenizer_of(ck, tokenizer)
    full, drift = tp_partition.merge([ck.rank_state(rank) for rank in range(ck.tp)], ck.vocab)
    result = ck.describe() | {"target": str(target), "replicated_drift": drift}
    result["verified"] = (
        logits_check.check(ck, logits_check.FullWeights(full, ck.model, ck.parscale, ck.vocab), "consolidated")
        if verify
        else "skipped (--no-verify)"
    )
    meta = {
        "step": ck.state["step"],
        "tokens_seen": ck.state["tokens_seen"],
        **({"seq_len": ck.state["seq_len"]} if "seq_len" in ck.state else {}),
        "consolidated_from": str(ck.folder),
        "source_layout": {k: result[k] for k in ("tp", "zero_stage", "precision")},
    }
    with staged_dir(target, PORTABLE_KIND, (source,)) as out:
        save_portable_state(full, ck.model, ck.parscale, ck.vocab, out, tok, meta, tok_info)
    return result
