#!/usr/bin/env bash
# Start N local processes of one lwm command with jax.distributed over gloo (CPU collectives).
#   scripts/launch_local.sh N -- train --config configs/train_debug.py --workdir /tmp/run
# Each process gets LWM_COORDINATOR / LWM_NUM_PROCESSES / LWM_PROCESS_ID; only process 0 logs and
# writes metrics. LWM_LOCAL_DEVICES (default 1) sets the simulated CPU devices per process.
# Exits with the first non-zero status of any process (0 if all succeed).
set -euo pipefail

if [[ $# -lt 3 || "$2" != "--" ]]; then
  echo "usage: $0 N -- <lwm subcommand and args>" >&2
  exit 2
fi
N="$1"
shift 2
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch_local.sh: N must be a positive integer, got '$N'" >&2
  exit 2
fi

PORT="${LWM_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
DEVICES="${LWM_LOCAL_DEVICES:-1}"
# LWM_BIN: the command to run (default `lwm`; e.g. "python -m lwm.cli.main").
read -r -a LWM_CMD <<< "${LWM_BIN:-lwm}"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < N; i++)); do
  LWM_COORDINATOR="127.0.0.1:${PORT}" LWM_NUM_PROCESSES="$N" LWM_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" \
    "${LWM_CMD[@]}" "$@" &
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    rc=$?
    [[ $status -eq 0 ]] && status=$rc
  fi
done
exit "$status"
