#!/usr/bin/env bash
# Train with DeepSpeed's own launcher on the hosts of a hostfile ("HOST slots=N" per line, see
# launch/hostfile.example). The first host holds the rendezvous; DeepSpeed reaches the others by
# passwordless ssh (pdsh), so run this on the first host, from a repository every host sees.
#
#   launch/deepspeed.sh HOSTFILE CONFIG [--set KEY=VALUE ...]
#   DRY_RUN=1 launch/deepspeed.sh launch/hostfile.example CONFIG    print the command, run nothing
#
# Environment: MASTER_PORT (29500), COMMAND (train, or eval), OMP_NUM_THREADS (default: this host's
# CPUs over its slots), DEEPSPEED_ARGS (more launcher options, e.g. "--launcher=openmpi").
set -euo pipefail
PARSCALE_ROOT=${PARSCALE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=launch/lib.sh
. "$PARSCALE_ROOT/launch/lib.sh"
help_or_usage "${BASH_SOURCE[0]}" "$@"
[ $# -ge 2 ] || die "give a HOSTFILE and a job CONFIG (see --help)"
hostfile=$1
shift
[ -f "$hostfile" ] || die "$hostfile: no such hostfile"

hosts=() slots=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  [ -n "${line//[[:space:]]/}" ] || continue
  if [[ $line =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([0-9]+)[[:space:]]*$ ]] && [ "${BASH_REMATCH[2]}" -gt 0 ]; then
    hosts+=("${BASH_REMATCH[1]}")
    slots+=("${BASH_REMATCH[2]}")
  else
    die "$hostfile:$lineno: expected 'HOST slots=N' (N > 0), got '$line'"
  fi
done <"$hostfile"
[ "${#hosts[@]}" -gt 0 ] || die "$hostfile: no hosts"
total=0
for n in "${slots[@]}"; do total=$((total + n)); done

values=$(config_get "$@" --get parallel.tensor_parallel_size --get parallel.data_parallel_size) || exit 2
tp=${values%%$'\n'*}
dp=${values##*$'\n'}
if [ "$dp" != null ] && [ $((tp * dp)) -ne "$total" ]; then
  die "$hostfile has $total slots but $1 asks for parallel.tensor_parallel_size $tp x parallel.data_parallel_size $dp = $((tp * dp)) processes"
fi

cmd=(env "OMP_NUM_THREADS=$(threads_per_proc "${slots[0]}")" "$(dirname "$PYTHON")/deepspeed"
  "--hostfile=$hostfile" "--master_addr=${hosts[0]}" "--master_port=${MASTER_PORT:-29500}" --no_local_rank)
# one host: DeepSpeed launches locally, and its ssh check would only fail on machines without sshd
[ "${#hosts[@]}" -gt 1 ] || cmd+=(--no_ssh_check)
if [ -n "${DEEPSPEED_ARGS:-}" ]; then
  read -r -a extra <<<"$DEEPSPEED_ARGS"
  cmd+=("${extra[@]}")
fi
cmd+=(--module pipeline.cli "${COMMAND:-train}" "$@")
if is_dry_run; then
  echo "# ${#hosts[@]} host(s), $total processes: $(paste -sd' ' <(for i in "${!hosts[@]}"; do echo "${hosts[$i]}:${slots[$i]}"; done))"
  quote "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
