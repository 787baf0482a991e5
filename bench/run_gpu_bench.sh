#!/usr/bin/env bash
# The `gpu` evaluation plan (10 rounds x 10 local steps, 6 silos, 3 seeds, privacy curve and
# upload compressions on both tasks) split over parallel `fedprompt bench` processes on one
# CUDA machine, then merged into reports/gpu. This is how reports/gpu was made (18
# processes, about 7 minutes on one H200 with 16 CPU cores), before the compression stage
# existed: the privacy processes now also run each seed's fp16 and int8 uploads.
# Usage: bench/run_gpu_bench.sh [timeout-seconds-per-process]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PARTS=reports/gpu-parts
LIMIT=${1:-3600}
mkdir -p "$PARTS"
STRATEGIES=$("$BIN/python" -c 'from fedprompt.strategies import STRATEGY_NAMES; print(" ".join(STRATEGY_NAMES))')
pids=()
for task in text vision; do
  for strategy in $STRATEGIES; do
    timeout "$LIMIT" "$BIN/fedprompt" bench --gpu --insecure --reports "$PARTS" \
      --tag "g-$task-$strategy" --tasks "$task" --strategies "$strategy" --skip-privacy \
      --skip-compression \
      >"$PARTS/log-$task-$strategy.txt" 2>&1 &
    pids+=($!)
  done
  for seed in 0 1 2; do
    timeout "$LIMIT" "$BIN/fedprompt" bench --gpu --insecure --reports "$PARTS" \
      --tag "g-priv-$task-$seed" --tasks "$task" --seeds "$seed" --privacy-only \
      --compression-only \
      >"$PARTS/log-priv-$task-$seed.txt" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || echo "some bench processes failed or timed out; see $PARTS/log-*.txt" >&2
"$BIN/fedprompt" bench --gpu --insecure --tag gpu --merge "$PARTS"/g-* --report-only
exit "$status"
