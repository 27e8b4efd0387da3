# shellcheck shell=bash
# Helpers the launch scripts source (PARSCALE_ROOT must be set first): the interpreter, the process
# count a job config asks for, thread settings, SLURM host lists, help text and dry-run printing.

PYTHON=${PYTHON:-$PARSCALE_ROOT/.venv/bin/python}

die() {
  echo "${0##*/}: $*" >&2
  exit 2
}

# show_help FILE: the script's leading comment block, without the shebang, #SBATCH and shellcheck lines.
show_help() {
  awk 'NR == 1 || /^#SBATCH/ || /^# shellcheck/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

# help_or_usage FILE ARGS...: print help and exit 0 on -h/--help, complain and exit 2 with no CONFIG.
help_or_usage() {
  local file=$1
  shift
  case ${1:-} in
    -h | --help) show_help "$file"; exit 0 ;;
    "") show_help "$file" >&2; die "give a job CONFIG" ;;
  esac
}

is_dry_run() {
  [ "${DRY_RUN:-0}" = 1 ]
}

# quote WORDS...: one line that the shell reads back as exactly these words.
quote() {
  local word out=()
  for word in "$@"; do
    out+=("$(printf '%q' "$word")")
  done
  echo "${out[*]}"
}

# config_get CONFIG [--set K=V ...] --get KEY ...: resolved values of a job config, one per line.
config_get() {
  "$PYTHON" -m pipeline.cli config "$@"
}

# visible_gpus: the entries of CUDA_VISIBLE_DEVICES up to the first invalid one (empty = none), as
# CUDA counts them: indices, GPU-/MIG- UUIDs; a negative index hides it and all after it.
visible_gpus() {
  local entry n=0 entries=()
  IFS=, read -ra entries <<<"$CUDA_VISIBLE_DEVICES"
  for entry in "${entries[@]}"; do
    entry=${entry//[[:space:]]/}
    [[ -n $entry && $entry != -* ]] || break
    n=$((n + 1))
  done
  echo "$n"
}

# gpus_on_node: the GPUs this node's processes can use: CUDA_VISIBLE_DEVICES when set (what torch
# will see; nvidia-smi lists every GPU regardless), else SLURM's count, else nvidia-smi's.
gpus_on_node() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    visible_gpus
  elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

# procs_per_node NNODES CONFIG [--set K=V ...]: TP x DP of the config, split over NNODES nodes. A config
# without parallel.data_parallel_size takes every GPU of the node in whole TP groups (TP x (GPUs / TP),
# at least one group; one TP group per CPU node), as pipeline.distributed.launcher.processes_per_job.
procs_per_node() {
  local nnodes=$1 config=$2 values tp dp gpus world
  shift
  values=$(config_get "$@" --get parallel.tensor_parallel_size --get parallel.data_parallel_size) || exit 2
  tp=${values%%$'\n'*}
  dp=${values##*$'\n'}
  if [ "$dp" = null ]; then
    gpus=$(gpus_on_node)
    echo $((gpus >= tp ? gpus / tp * tp : tp))
    return
  fi
  world=$((tp * dp))
  if ((world % nnodes)); then
    die "$config: parallel.tensor_parallel_size $tp x parallel.data_parallel_size $dp = $world processes do not split evenly over $nnodes nodes"
  fi
  echo $((world / nnodes))
}

# threads_per_proc NPROC: OMP_NUM_THREADS if set, else the node's CPUs shared between its processes.
threads_per_proc() {
  local cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
  if [ -n "${OMP_NUM_THREADS:-}" ]; then
    echo "$OMP_NUM_THREADS"
  else
    echo $((cpus / $1 > 0 ? cpus / $1 : 1))
  fi
}

# expand_hosts LIST: one host per line ('gpu[01-02]' -> gpu01, gpu02), by scontrol where SLURM is.
expand_hosts() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1"
  else
    "$PYTHON" -m pipeline.distributed.hostlist "$1"
  fi
}
