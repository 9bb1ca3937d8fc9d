#!/usr/bin/env bash
# Accelerator check (issue 17): kernel parity, attention vs cuDNN, 1b train-step MFU, decode speed.
#   scripts/device_check.sh [--out DIR] [--phases parity,attention,train,decode]   # one GPU/TPU
#   scripts/device_check.sh --cpu-dry-run                                           # CPU, tiny
# JSON lines go to stdout and DIR/device_check.jsonl (DIR: --out, else $OUT, else ./device_check_out).
# The whole run is capped at DEVICE_CHECK_TIMEOUT seconds (default 470: under 8 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
if ! "$py" -c "import jax" 2>/dev/null; then
  echo "device_check: $py cannot import jax; install with: make setup ACCEL=cuda (or tpu)" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take most of the accelerator's memory (its default preallocation is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec timeout --signal=INT --kill-after=10 "${DEVICE_CHECK_TIMEOUT:-470}" \
  "$py" "$root/scripts/device_check.py" "$@"
