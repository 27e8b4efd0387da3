#!/usr/bin/env bash
# What a GPU machine runs first: every GPU check in one call, about 5-8 minutes on one GPU, all of
# its output in one folder. It installs nothing: the machine needs the README's GPU install (PyTorch
# with CUDA, plus the wheels of launch/gpu_wheels.sh) and data prepared on a CPU machine.
#
#   benchmarks/gpu_check.sh --prepare DIR            on a CPU machine with the full install: prepare the
#                                                    smoke data (the standard library, seq 512, 8192 ids;
#                                                    configs/prep_stdlib.yaml) into DIR (~45 MB)
#   benchmarks/gpu_check.sh --data DIR --out OUT     on the GPU machine
#
# It runs, in order, each step's output in OUT/check.log and its verdict in OUT/summary.txt (a failed
# step is recorded and the steps that do not need its output still run):
#   env         nvidia-smi, Python, torch / CUDA / Triton / DeepSpeed / megatron-core versions -> OUT/env.txt
#   stage1      configs/gpu_smoke.yaml (dense, ~30M parameters, bf16, FlexAttention forced, ZeRO 1, NCCL,
#               one process per visible GPU), 30 steps, saving and exiting at step 12 (checkpoint.exit_at_step)
#   stage1-resume  the same command again: resumes from step 12 (must say "resumed from") and finishes
#               -> OUT/stage1.metrics.jsonl
#   consolidate the last stage-1 checkpoint to a portable folder, logits verified (gloo, CPU)
#   to-parscale that portable to P = 4 (prefix length 16), backbone verified
#   stage2      30 steps of P = 4 from it (same settings), stream diagnostics -> OUT/stage2.metrics.jsonl
#   eval        parscale eval (validation loss, stream diagnostics) of the stage-2 portable on the GPU
#   generate    32 greedy tokens from the stage-2 portable, with the KV cache, on the GPU
#   gpu_step    benchmarks/gpu_step.py --streams 1,8 (0.5B preset, seq 2048, flex and sdpa, activation
#               checkpointing as its default, the eager baseline) -> OUT/gpu_step.json (rows written one
#               by one: an OOM row is recorded as such and the others still run)
#
# --cpu runs the same steps on CPU (gloo, SDPA, fp32, a 2-layer model, one process, the benchmark with
# --allow-cpu) to check the script itself, on any prepared folder; its figures mean nothing.
#
# Options: --work DIR (run folders; default a new folder under $TMPDIR), --steps-limit SECONDS (each
# step's time limit, default 240), --bench-limit SECONDS (gpu_step's, default 360), --skip-benchmark. Environment: PYTHON (default .venv/bin/python when
# it exists, else python3), NPROC (processes for training, default: the visible GPUs).
# Exit status: 0 when every step passed, 1 when one failed, 2 on bad arguments or missing input.
set -uo pipefail
PARSCALE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$PARSCALE_ROOT/.venv/bin/python" ]; then PYTHON=$PARSCALE_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
# shellcheck source=launch/lib.sh
. "$PARSCALE_ROOT/launch/lib.sh"
cd "$PARSCALE_ROOT" || exit 2

data="" out="" work="" limit=240 bench_limit=360 bench=1 prepare="" cpu=0
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) show_help "$0"; exit 0 ;;
    --prepare) prepare=${2:?--prepare needs a folder}; shift 2 ;;
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --work) work=${2:?--work needs a folder}; shift 2 ;;
    --steps-limit) limit=${2:?--steps-limit needs seconds}; shift 2 ;;
    --bench-limit) bench_limit=${2:?--bench-limit needs seconds}; shift 2 ;;
    --skip-benchmark) bench=0; shift ;;
    --cpu) cpu=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

if [ -n "$prepare" ]; then
  exec "$PYTHON" -m pipeline.cli prep configs/prep_stdlib.yaml --set "data.output_dir=$prepare"
fi
[ -n "$data" ] || die "give --data DIR (prepared on a CPU machine with --prepare DIR)"
[ -n "$out" ] || die "give --out DIR"
[ -f "$data/manifest.json" ] || die "$data: no manifest.json: not a prepared folder (make one with --prepare)"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
work=${work:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$work" || die "cannot create $work"
log=$out/check.log summary=$out/summary.txt
: >"$log"
: >"$summary"
failed=0
limited=(timeout --kill-after=10 "$limit") # every command of a step; a step made of several gets it on each
export PYTHONUNBUFFERED=1

# step NAME COMMAND...: run with the time limit, output appended to the log, verdict to the summary.
step() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  printf '\n===== %s: %s\n' "$name" "$(quote "$@")" >>"$log"
  if [ "$(type -t "$1")" = function ]; then "$@"; else "${limited[@]}" "$@"; fi >>"$log" 2>&1
  rc=$?
  local verdict=PASS
  [ $rc -eq 0 ] || { verdict="FAIL (exit $rc$([ $rc -eq 124 ] && echo ", over ${limited[2]} s"))"; failed=1; }
  printf '%-12s %-28s %4d s\n' "$name" "$verdict" $(($(date +%s) - start)) | tee -a "$summary"
  return $rc
}

environment() {
  { "${limited[@]}" nvidia-smi || echo "nvidia-smi: not available"
  "${limited[@]}" "$PYTHON" - <<'EOF'
import importlib, platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB sm_{p.major}{p.minor} bf16 {torch.cuda.is_bf16_supported()}")
print("nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-")
for name in ("triton", "deepspeed", "megatron.core", "pydantic", "sentencepiece", "safetensors"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # a missing package is what this file is for
        print(name, "MISSING:", exc)
EOF
  } 2>&1 | tee "$out/env.txt"
}

seq=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["seq_len"])' "$data/manifest.json") ||
  die "$data/manifest.json: no seq_len"
device=cuda micro=8 extra=() bench_extra=()
if [ $cpu = 1 ]; then
  device=cpu micro=2 bench_extra=(--allow-cpu --steps 1 --warmup 1)
  extra=(--set parallel.backend=gloo --set model.attention_backend=sdpa --set parallel.precision=fp32
    --set model.num_layers=2 --set model.hidden_size=32 --set model.ffn_hidden_size=64
    --set model.num_attention_heads=4 --set model.num_kv_heads=2 --set "model.max_seq_len=$seq")
  nproc=${NPROC:-1}
else
  nproc=${NPROC:-$(gpus_on_node)}
fi
[ "${nproc:-0}" -ge 1 ] || nproc=1
batch=$((micro * nproc))
tokens=$((30 * batch * seq)) # 30 steps
train() { # train STAGE_DIR [--set ...]
  local dir=$1
  shift
  "${limited[@]}" "$PYTHON" -m pipeline.distributed.torchrun_main --standalone "--nproc_per_node=$nproc" -m pipeline.cli train \
    configs/gpu_smoke.yaml --set "data.output_dir=$data" --set "run.output_dir=$dir" \
    --set "packing.seq_len=$seq" --set "parallel.micro_batch_size=$micro" --set "parallel.global_batch_size=$batch" \
    --set "train.tokens=$tokens" --set "schedule.warmup_tokens=$((5 * batch * seq))" "${extra[@]}" "$@"
}

# stage 1 saves and exits at step 12 (checkpoint.exit_at_step), then the same command resumes to the end
stage1_stopped() {
  train "$work/stage1" --set checkpoint.exit_at_step=12 | tee "$work/stage1.first.log"
  grep -q "exit_at_step: 12 reached" "$work/stage1.first.log" || { echo "gpu_check: stage 1 did not stop at 12" >&2; return 1; }
}
stage1_resumed() {
  train "$work/stage1" --set checkpoint.exit_at_step=12 | tee "$work/stage1.resume.log"
  grep -q "resumed from" "$work/stage1.resume.log" || { echo "gpu_check: the second run did not resume" >&2; return 1; }
}
step env environment
step stage1 stage1_stopped
step stage1-resume stage1_resumed && cp "$work/stage1/metrics.jsonl" "$out/stage1.metrics.jsonl"
step consolidate "$PYTHON" -m pipeline.cli convert consolidate "$work/stage1" "$work/stage1-portable"
step to-parscale "$PYTHON" -m pipeline.cli convert to-parscale --streams 4 --prefix-len 16 \
  "$work/stage1-portable" "$work/stage2-init"
step stage2 train "$work/stage2" --set parscale.streams=4 --set parscale.prefix_len=16 \
  --set parscale.prefix_init_std=1.0 --set "train.init_from=$work/stage2-init" &&
  cp "$work/stage2/metrics.jsonl" "$out/stage2.metrics.jsonl"
step eval "$PYTHON" -m pipeline.cli eval configs/gpu_smoke.yaml --set "data.output_dir=$data" \
  --set "run.output_dir=$work/stage2" --set "packing.seq_len=$seq" "${extra[@]}" --device $device
step generate "$PYTHON" -m pipeline.cli generate "$work/stage2/portable" --prompt "def main(" --max-new-tokens 32 \
  --device $device
if [ $bench = 1 ]; then
  limited=(timeout --kill-after=10 "$bench_limit")
  step gpu_step "$PYTHON" benchmarks/gpu_step.py --streams 1,8 --json "$out/gpu_step.json" "${bench_extra[@]}"
fi
echo "gpu_check: work folder $work; output in $out" | tee -a "$summary"
exit $failed
