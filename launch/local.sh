#!/usr/bin/env bash
# Launch a pipeline module on this node under torchrun, one process per rank, with the CPU threads
# split between ranks. DRY_RUN=1 prints the command and environment instead of running them.
#
#   launch/local.sh NPROC MODULE [ARGS...]
#   launch/local.sh 2 pipeline.distributed.healthcheck configs/demo.yaml --out runs/healthcheck
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
nproc=$1 module=$2
shift 2
cpus=$(nproc)
threads=${OMP_NUM_THREADS:-$(( cpus / nproc > 0 ? cpus / nproc : 1 ))}
cmd=("$python" -m torch.distributed.run --standalone "--nproc_per_node=$nproc" -m "$module" "$@")
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "OMP_NUM_THREADS=$threads ${cmd[*]}"
  exit 0
fi
OMP_NUM_THREADS=$threads exec "${cmd[@]}"
