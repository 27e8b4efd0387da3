"""Resume never unpickles code: a run folder handed over with a payload planted in its DeepSpeed
files (and a ``files.json`` made consistent with it) is refused naming the file, and the payload
never runs; the same checkpoint without the payload resumes."""

from __future__ import annotations

import pytest
import torch
from helpers.training import job_config

from pipeline.checkpoint import integrity
from pipeline.checkpoint.portable import CheckpointError
from pipeline.checkpoint.trainer_ckpt import safe_load
from pipeline.config import load_config
from pipeline.distributed import destroy_distributed
from pipeline.training.train import train


class Payload:
    """What an attacker pickles: unpickling it calls ``Path.touch`` on the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_planted_payload_is_refused_on_resume_and_never_runs(tmp_path, prepared_data, single_rank, victim):
    first = job_config(tmp_path, prepared_data, "run", train={"tokens": 2 * 8 * 32}, checkpoint={"interval_steps": 2})
    assert train(load_config(first))["step"] == 2
    checkpoints = tmp_path / "run" / "checkpoints"
    folder = checkpoints / (checkpoints / "latest").read_text().strip()
    path = folder / victim
    state = safe_load(path, mmap=False)
    marker = tmp_path / "payload-ran"
    state["extra"] = Payload(marker)
    torch.save(dict(state), path)
    integrity.record(folder)  # consistent sizes and hashes: only the unpickling can tell
    more = load_config(first, ["train.tokens=" + str(4 * 8 * 32)])
    with pytest.raises(CheckpointError, match=rf"{path}: refused to unpickle it"):
        train(more)
    destroy_distributed()
    assert not marker.exists()
    del state["extra"]
    torch.save(dict(state), path)
    integrity.record(folder)
    assert train(more)["step"] == 4  # the same checkpoint, clean: resumes
