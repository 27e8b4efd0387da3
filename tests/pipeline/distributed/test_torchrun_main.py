"""A config error found by the ranks ends a torchrun launch with exit 2 and the ranks' message, not
with torchrun's ChildFailedError traceback and exit 1."""

from __future__ import annotations

import pytest
from helpers.process import run_module
from helpers.training import job_config
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from pipeline.distributed.torchrun_main import refused_by_ranks


@pytest.mark.multiprocess
def test_ranks_refusing_the_config_exit_2_without_a_traceback(tmp_path, prepared_data):
    config = job_config(tmp_path, prepared_data, "bad", model={"vocab_size": 300}, parallel={"data_parallel_size": 2})
    proc = run_module(
        "pipeline.distributed.torchrun_main",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline.cli",
        "train",
        str(config),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model.vocab_size: 300 is below the tokenizer's 400" in proc.stderr
    assert "refused the job (exit 2)" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr


def _failed(*exitcodes: int) -> ChildFailedError:
    failures = {rank: ProcessFailure(rank, 1000 + rank, code, "") for rank, code in enumerate(exitcodes)}
    return ChildFailedError("pipeline.cli", failures)


@pytest.mark.parametrize(
    ("exitcodes", "refused"),
    [
        ((2, 2), True),
        ((2, -15), True),  # the other rank was stopped by torchrun after rank 0 refused
        ((-15, 2), True),
        ((1, 2), False),  # a real crash on one rank is never hidden
        ((-15, -15), False),  # killed from outside: torchrun's own report
        ((2, -9), False),
    ],
)
def test_only_a_refusal_with_torchruns_own_sigterm_counts_as_exit_2(exitcodes, refused):
    assert refused_by_ranks(_failed(*exitcodes)) is refused
