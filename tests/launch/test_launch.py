"""The launch scripts: shellcheck, --help, dry runs (local, SLURM at 1 and 4 nodes, DeepSpeed hostfile),
clear refusals, and real runs: two torchrun "nodes" rendezvousing on 127.0.0.1 against the DeepSpeed
launcher, and the SLURM training script's signal -> checkpoint -> requeue -> resume cycle."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.launch import LAUNCH, clean_env, fake_slurm, run_script, words
from helpers.paths import CONFIGS, REPO
from helpers.training import job_config, metrics, step_losses

from pipeline.distributed.hostlist import expand
from pipeline.distributed.runtime import free_port

SCRIPTS = ["local.sh", "node.sh", "deepspeed.sh", "slurm/train.sbatch", "slurm/prep.sbatch"]
STAGE1 = str(CONFIGS / "stage1_dense.yaml")  # TP=2, data_parallel_size unset: every GPU of a node


def test_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    files = [str(LAUNCH / s) for s in SCRIPTS] + [str(LAUNCH / "lib.sh"), str(LAUNCH / "gpu_wheels.sh")]
    proc = subprocess.run([str(shellcheck), "-x", "--severity=style", *files], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"launch/{script}" in proc.stdout and "DRY_RUN=1" in proc.stdout
    assert "#SBATCH" not in proc.stdout and "shellcheck" not in proc.stdout
    bare = run_script(script)
    assert bare.returncode == 2 and "CONFIG" in bare.stderr


def test_gpu_wheels_dry_run_downloads_the_pinned_training_packages_for_the_target_python(tmp_path):
    assert "DRY_RUN=1" in run_script("gpu_wheels.sh", "--help").stdout
    assert run_script("gpu_wheels.sh").returncode == 2
    proc = run_script("gpu_wheels.sh", str(tmp_path / "w"), "3.12", env=clean_env(DRY_RUN="1"))
    assert proc.returncode == 0, proc.stderr
    download, wheel = (words(line) for line in proc.stdout.splitlines())
    assert download[1:4] == ["-m", "pip", "download"] and "--no-deps" in download
    assert download[download.index("--python-version") + 1] == "3.12"
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    for name in ("megatron-core", "pydantic", "pydantic_core", "hjson", "einops"):
        assert f"{name}=={pins[name]}" in download
    assert wheel[1:4] == ["-m", "pip", "wheel"] and wheel[-1] == f"deepspeed=={pins['deepspeed']}"
    assert not (tmp_path / "w").exists()


def test_hostlist_expands_like_scontrol():
    assert expand("gpu[01-03,10],login1") == ["gpu01", "gpu02", "gpu03", "gpu10", "login1"]
    assert expand("r[1-2]-n[8-9]") == ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
    with pytest.raises(ValueError, match="bad range"):
        expand("gpu[a-b]")
    with pytest.raises(ValueError, match="without"):
        expand("gpu[01-02")


def test_local_dry_run_takes_the_process_count_from_the_config():
    proc = run_script(
        "local.sh", CONFIGS / "demo.yaml", "--set", "run.name=x", env=clean_env(DRY_RUN="1", OMP_NUM_THREADS="3")
    )
    assert proc.returncode == 0, proc.stderr
    assert words(proc.stdout.strip()) == [
        "env",
        "OMP_NUM_THREADS=3",
        sys.executable,
        "-m",
        "pipeline.distributed.torchrun_main",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline.cli",
        "train",
        str(CONFIGS / "demo.yaml"),
        "--set",
        "run.name=x",
    ]


def _local_nproc(**env: str) -> int:
    """The process count of a local dry run of stage 1 (TP = 2, data_parallel_size unset)."""
    proc = run_script("local.sh", STAGE1, env=clean_env(DRY_RUN="1", **env))
    assert proc.returncode == 0, proc.stderr
    (count,) = (w.split("=")[1] for w in words(proc.stdout.strip()) if w.startswith("--nproc_per_node="))
    return int(count)


@pytest.mark.parametrize(
    "visible,nproc",
    [
        ("0,1,2,3", 4),
        ("0,1,2", 2),  # whole TP groups only
        ("", 2),  # none visible (the test suite's own setting): one TP group, as on a CPU
        ("GPU-8f2a,GPU-77c1,MIG-1e0d,GPU-0b3c,GPU-5d11,GPU-aa90", 6),
        ("0,1,-1,3,4", 2),  # CUDA stops at an invalid index: 2 visible
    ],
)
def test_without_data_parallel_size_the_launch_counts_the_visible_gpus_in_whole_tp_groups(visible, nproc):
    assert _local_nproc(CUDA_VISIBLE_DEVICES=visible) == nproc
    # what torch will see wins over SLURM's allocation (and over nvidia-smi, which lists every GPU)
    assert _local_nproc(CUDA_VISIBLE_DEVICES=visible, SLURM_GPUS_ON_NODE="8") == nproc


def _slurm_env(nodelist: str, **extra) -> dict[str, str]:
    env = clean_env(
        DRY_RUN="1",
        SLURM_JOB_NODELIST=nodelist,
        SLURM_JOB_ID="77",
        SLURM_SUBMIT_DIR="/shared/runs",
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_ON_NODE="64",
        **extra,
    )
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_MAX_CONNECTIONS"):  # the allocation's 8 GPUs count
        env.pop(name, None)
    return env


@pytest.mark.parametrize("nodelist,hosts", [("gpu07", ["gpu07"]), ("gpu[01-04]", ["gpu01", "gpu02", "gpu03", "gpu04"])])
def test_slurm_training_dry_run(tmp_path, nodelist, hosts):
    proc = run_script(
        "slurm/train.sbatch", STAGE1, "--set", "train.tokens=100G", env=_slurm_env(nodelist), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    n = len(hosts)
    for expected in [
        f"export MASTER_ADDR={hosts[0]}",
        "export MASTER_PORT=29500",
        f"export NNODES={n}",
        "export RDZV_ID=77",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        "export NCCL_DEBUG=WARN",
    ]:
        assert expected in lines
    # set by the ranks themselves, only where TP > 1: with TP = 1 it would serialise ZeRO's streams
    assert not any("CUDA_DEVICE_MAX_CONNECTIONS" in line for line in lines)
    stop = "checkpoint.stop_file=/shared/runs/.parscale-stop-77"
    srun = words(next(line for line in lines if line.startswith("srun ")))
    assert srun == [
        "srun",
        f"--nodes={n}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        str(LAUNCH / "node.sh"),
        STAGE1,
        "--set",
        "train.tokens=100G",
        "--set",
        stop,
    ]
    torchrun = words(next(line for line in lines if "torchrun_main" in line))
    assert torchrun == [
        "env",
        "OMP_NUM_THREADS=8",
        sys.executable,
        "-m",
        "pipeline.distributed.torchrun_main",
        f"--nnodes={n}",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={hosts[0]}:29500",
        "--rdzv_id=77",
        "--max_restarts=0",
        "-m",
        "pipeline.cli",
        "train",
        STAGE1,
        "--set",
        "train.tokens=100G",
        "--set",
        stop,
    ]
    assert "scontrol requeue 77" in proc.stdout
    assert not list(tmp_path.iterdir()), "a dry run wrote files"


def test_slurm_training_refuses_a_world_that_does_not_split_over_the_nodes():
    proc = run_script("slurm/train.sbatch", CONFIGS / "demo.yaml", env=_slurm_env("gpu[01-04]"))
    assert proc.returncode == 2
    assert "parallel.tensor_parallel_size 1 x parallel.data_parallel_size 2 = 2 processes" in proc.stderr
    assert "4 nodes" in proc.stderr
    outside = run_script("slurm/train.sbatch", STAGE1, env=clean_env())
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr


@pytest.mark.parametrize("nodelist,workers", [("cpu01", 0), ("cpu[01-04]", 3)])
def test_slurm_prep_dry_run(nodelist, workers):
    config = str(CONFIGS / "prep_stdlib.yaml")
    proc = run_script("slurm/prep.sbatch", config, env=_slurm_env(nodelist, SLURM_CPUS_PER_TASK="32"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    ray = str(Path(sys.executable).parent / "ray")
    srun_lines = [words(line) for line in lines if line.startswith("srun ")]
    assert srun_lines[0] == [
        "srun",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=32",
        "--nodelist=cpu01",
        ray,
        "start",
        "--head",
        "--port=6379",
        "--include-dashboard=false",
        "--num-cpus=32",
        "--disable-usage-stats",
        "--block",
    ]
    if workers:
        assert srun_lines[1] == [
            "srun",
            f"--nodes={workers}",
            f"--ntasks={workers}",
            "--ntasks-per-node=1",
            "--cpus-per-task=32",
            "--exclude=cpu01",
            ray,
            "start",
            "--address=cpu01:6379",
            "--num-cpus=32",
            "--disable-usage-stats",
            "--block",
        ]
    assert len(srun_lines) == 1 + bool(workers)
    assert [
        sys.executable,
        "-m",
        "data_prep.ray_cluster",
        "--address=cpu01:6379",
        f"--nodes={workers + 1}",
        "--timeout=300",
    ] in [words(line) for line in lines]
    assert words(lines[-2]) == [
        sys.executable,
        "-m",
        "pipeline.cli",
        "prep",
        config,
        "--set",
        "data.ray_address=cpu01:6379",
    ]


def test_deepspeed_dry_run_with_the_example_hostfile():
    hostfile = LAUNCH / "hostfile.example"
    proc = run_script(
        "deepspeed.sh",
        hostfile,
        STAGE1,
        "--set",
        "parallel.data_parallel_size=16",
        env=clean_env(DRY_RUN="1", OMP_NUM_THREADS="4", MASTER_PORT="29999"),
    )
    assert proc.returncode == 0, proc.stderr
    head, command = proc.stdout.splitlines()
    assert "4 host(s), 32 processes" in head
    assert words(command) == [
        "env",
        "OMP_NUM_THREADS=4",
        str(Path(sys.executable).parent / "deepspeed"),
        f"--hostfile={hostfile}",
        "--master_addr=gpu-node-01",
        "--master_port=29999",
        "--no_local_rank",
        "--module",
        "pipeline.cli",
        "train",
        STAGE1,
        "--set",
        "parallel.data_parallel_size=16",
    ]


def test_deepspeed_launcher_names_the_bad_hostfile_line(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# comment\nnode1 slots=2\nnode2 slots=two\n")
    proc = run_script("deepspeed.sh", hostfile, CONFIGS / "demo.yaml", env=clean_env(DRY_RUN="1"))
    assert proc.returncode == 2 and f"{hostfile}:3: expected 'HOST slots=N'" in proc.stderr
    hostfile.write_text("node1 slots=4\n")
    proc = run_script("deepspeed.sh", hostfile, CONFIGS / "demo.yaml", env=clean_env(DRY_RUN="1"))
    assert proc.returncode == 2 and "has 4 slots but" in proc.stderr and "= 2 processes" in proc.stderr
    proc = run_script("deepspeed.sh", tmp_path / "missing", CONFIGS / "demo.yaml", env=clean_env(DRY_RUN="1"))
    assert proc.returncode == 2 and "no such hostfile" in proc.stderr


def test_node_launcher_needs_the_rendezvous_host():
    proc = run_script("node.sh", CONFIGS / "demo.yaml", env=clean_env(DRY_RUN="1"))
    assert proc.returncode == 2 and "MASTER_ADDR" in proc.stderr


# ---------------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def data(prepared_data) -> Path:
    return prepared_data


@pytest.mark.multiprocess
def test_two_nodes_on_one_machine_train_like_the_deepspeed_launcher(tmp_path, data):
    config = job_config(tmp_path, data, "two_nodes", parallel={"data_parallel_size": 2})
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), NNODES="2", RDZV_ID="sim")
    nodes = [
        subprocess.Popen(
            [str(LAUNCH / "node.sh"), str(config)],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "TP 1 x DP 2" in "".join(outputs)
    assert (tmp_path / "two_nodes" / "portable" / "model.safetensors").exists()

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    ds_config = job_config(tmp_path, data, "deepspeed", parallel={"data_parallel_size": 2})
    proc = run_script("deepspeed.sh", hostfile, ds_config, env=clean_env(MASTER_PORT=str(free_port())), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two_nodes, deepspeed = step_losses(tmp_path / "two_nodes"), step_losses(tmp_path / "deepspeed")
    assert len(two_nodes) == 8 and two_nodes == deepspeed


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the job ended before it could be signalled"
        if (run_dir / "metrics.jsonl").exists() and any(r.get("step", 0) >= step for r in metrics(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.mark.multiprocess
def test_slurm_signal_checkpoints_requeues_and_resumes(tmp_path, data):
    steps = 60
    config = job_config(
        tmp_path,
        data,
        "slurm",
        parallel={"data_parallel_size": 2},
        train={"tokens": steps * 8 * 32},
        checkpoint={"interval_steps": 1000},
    )
    bin_dir = fake_slurm(tmp_path / "bin")
    log = tmp_path / "scontrol.log"
    env = clean_env(
        PATH=f"{bin_dir}:{clean_env()['PATH']}",
        SCONTROL_LOG=str(log),
        SLURM_JOB_NODELIST="127.0.0.1",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(tmp_path),
        MASTER_PORT=str(free_port()),
    )
    run_dir, stop_file = tmp_path / "slurm", tmp_path / ".parscale-stop-4242"

    job = subprocess.Popen(
        [str(LAUNCH / "slurm/train.sbatch"), str(config)],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for_step(run_dir, job, 2)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does before the time limit
    out = job.communicate(timeout=300)[0]
    assert job.returncode == 0, out[-3000:]
    assert "asking the trainers to checkpoint and stop" in out and "requeueing job 4242" in out
    assert log.read_text().split("\n")[0] == "requeue 4242"
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 2 <= saved < steps and f"saved step {saved}" in out
    assert not stop_file.exists() and not (run_dir / "portable").exists()

    # SLURM starts the requeued job from the top: it resumes and finishes, and does not requeue again
    again = subprocess.run(
        [str(LAUNCH / "slurm/train.sbatch"), str(config)],
        cwd=REPO,
        env={**env, "SLURM_RESTART_COUNT": "1"},
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"at step {saved}" in again.stdout and "restart 1" in again.stdout
    assert max(step_losses(run_dir)) == steps and (run_dir / "portable" / "model.safetensors").exists()
    assert log.read_text().splitlines() == ["requeue 4242"]
