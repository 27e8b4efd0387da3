"""``parscale convert reshard``: a trainer checkpoint at TP=a -> the same step at TP=b, which
``parscale train`` resumes from with the config's ``parallel.tensor_parallel_size`` set to b.

Every parameter is merged over TP ranks and split again along its partition dimension: the
vocabulary rows are re-padded for the new TP, ParScale prefixes are cut by KV head. The output is
``TARGET/stepN/`` with one safetensors file per TP rank, the trainer state (step, tokens seen,
data position) and the resolved config with the new TP; ``TARGET/latest`` points at it.

The Adam moments are not carried (as with Megatron-LM's checkpoint converter): the resumed run
starts them afresh at the saved step, schedule and data position, and says so. Verified: the
source at TP=a and the result at TP=b give the same logits, before anything is renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import save_file

from pipeline.checkpoint import integrity, tp_partition
from pipeline.checkpoint.portable import CheckpointError
from pipeline.checkpoint.step_folders import COMPLETE, CONFIG, LATEST, RESHARDED, STATE
from pipeline.checkpoint.trainer_ckpt import TrainerCheckpoint
from pipeline.utils.fs import atomic_write_text, staged_dir

from . import logits_check

RESHARD_KIND = "resharded checkpoint"


def reshard(source: str | Path, target: str | Path, tp: int, verify: bool = True) -> dict:
    ck = TrainerCheckpoint(source)
    if problem := tp_partition.tp_problem(ck.model, tp):
        raise CheckpointError(f"--tp {tp}: {problem}")
    full, drift = tp_partition.merge([ck.rank_state(rank) for rank in range(ck.tp)], ck.vocab)
    target = Path(target)
    tag = ck.folder.name
    result = ck.describe() | {"target": str(target / tag), "target_tp": tp, "replicated_drift": drift}
    with staged_dir(target / tag, RESHARD_KIND, (source,)) as out:
        for rank, state in enumerate(tp_partition.split(full, tp, ck.model, ck.vocab)):
            save_file(state, str(out / f"tp_rank_{rank:02d}.safetensors"), metadata={"format": "pt"})
        state = json.loads(json.dumps(ck.state))
        state["identity"]["parallel.tensor_parallel_size"] = tp
        config = yaml.safe_load((ck.folder / CONFIG).read_text())
        config["parallel"] |= {"tensor_parallel_size": tp, "data_parallel_size": None}
        (out / STATE).write_text(json.dumps(state, indent=2))
        (out / CONFIG).write_text(
            f"# resharded from {ck.folder} (TP={ck.tp} -> {tp})\n" + yaml.safe_dump(config, sort_keys=False)
        )
        (out / RESHARDED).write_text(
            json.dumps(
                {
                    "source": str(ck.folder),
                    "source_tp": ck.tp,
                    "tp": tp,
                    "optimizer_state": "not carried; Adam moments restart",
                },
                indent=2,
            )
        )
        integrity.record(out)
        (out / COMPLETE).write_text("")
        result["verified"] = (
            logits_check.check(ck, TrainerCheckpoint(out, check_files=False), "resharded")
            if verify
            else "skipped (--no-verify)"
        )
    atomic_write_text(target / LATEST, tag)
    return result
