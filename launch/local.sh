#!/usr/bin/env bash
# Train (or evaluate) on this machine: torchrun with as many processes as the config asks for
# (parallel.tensor_parallel_size x parallel.data_parallel_size), the CPUs shared between them.
#
#   launch/local.sh CONFIG [--set KEY=VALUE ...]
#   DRY_RUN=1 launch/local.sh configs/stage1_dense.yaml      print the command, run nothing
#
# Environment: COMMAND (train, or eval), NPROC (process count instead of the config's),
# OMP_NUM_THREADS (threads per process), PYTHON (default .venv/bin/python), DRY_RUN=1.
set -euo pipefail
PARSCALE_ROOT=${PARSCALE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=launch/lib.sh
. "$PARSCALE_ROOT/launch/lib.sh"
help_or_usage "${BASH_SOURCE[0]}" "$@"

nproc=${NPROC:-$(procs_per_node 1 "$@")}
cmd=(env "OMP_NUM_THREADS=$(threads_per_proc "$nproc")"
  "$PYTHON" -m pipeline.distributed.torchrun_main --standalone "--nproc_per_node=$nproc"
  -m pipeline.cli "${COMMAND:-train}" "$@")
if is_dry_run; then
  quote "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
