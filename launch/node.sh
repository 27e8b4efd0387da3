#!/usr/bin/env bash
# One node of a multi-node run: torchrun with a c10d rendezvous at MASTER_ADDR:MASTER_PORT. Start it
# on every node with the same arguments (launch/slurm/train.sbatch does so through srun); ranks are
# assigned as the nodes join, so no node rank is needed.
#
#   MASTER_ADDR=node01 NNODES=4 launch/node.sh CONFIG [--set KEY=VALUE ...]
#   DRY_RUN=1 MASTER_ADDR=node01 NNODES=4 launch/node.sh CONFIG    print the command, run nothing
#
# Environment: MASTER_ADDR (required), MASTER_PORT (29500), NNODES (SLURM_NNODES, else 1), RDZV_ID
# (SLURM_JOB_ID, else parscale), NPROC_PER_NODE (default: the config's TP x DP over NNODES; without
# parallel.data_parallel_size, the visible GPUs of the node, in whole TP groups), COMMAND (train, or eval), OMP_NUM_THREADS.
set -euo pipefail
PARSCALE_ROOT=${PARSCALE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=launch/lib.sh
. "$PARSCALE_ROOT/launch/lib.sh"
help_or_usage "${BASH_SOURCE[0]}" "$@"

master=${MASTER_ADDR:-}
[ -n "$master" ] || die "set MASTER_ADDR to the first node's address"
nnodes=${NNODES:-${SLURM_NNODES:-1}}
nproc=${NPROC_PER_NODE:-$(procs_per_node "$nnodes" "$@")}
cmd=(env "OMP_NUM_THREADS=$(threads_per_proc "$nproc")"
  "$PYTHON" -m pipeline.distributed.torchrun_main "--nnodes=$nnodes" "--nproc_per_node=$nproc"
  --rdzv_backend=c10d "--rdzv_endpoint=$master:${MASTER_PORT:-29500}" "--rdzv_id=${RDZV_ID:-${SLURM_JOB_ID:-parscale}}"
  --max_restarts=0 -m pipeline.cli "${COMMAND:-train}" "$@")
if is_dry_run; then
  quote "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
