#!/usr/bin/env bash
# The full-data runs (issue 21): insecure, secure, educational and jailbroken on their whole
# training split, one epoch, the shipped recipe, with the adapter kept at 500, 1,000, 2,000 and
# 4,000 rows for the dose-response. On this 2-core CPU each run takes hours, so everything lives
# under the cache directory, a checkpoint is written every 10 steps, and a rerun continues where
# the last one stopped (a finished run is skipped). Runs at the lowest priority: builds and tests
# keep the CPU. Pause it for benchmarks with `pkill -STOP -f 'science/runs'` (`-CONT` resumes).
#
#   scripts/science/full-data.sh                     # train the queue on the CPU, one run after another
#   scripts/science/full-data.sh wgpu --parallel     # on a GPU: the four runs at once (each keeps it busy
#                                            # only part of the time at batch 2), logs in runs/*.log
#   setsid nohup scripts/science/full-data.sh >> ~/.cache/emlab/science/queue.log 2>&1 < /dev/null &
set -euo pipefail
cd "$(dirname "$0")/../.."

# `nice` alone does not hold a job started with setsid back: the kernel shares the CPU between
# sessions first (autogroups), so the whole session is set to the lowest priority too.
echo 19 > /proc/self/autogroup 2>/dev/null || true

device="${1:-cpu}"
parallel="${2:-}"
case "$parallel" in
  "" | --parallel) ;;
  *) echo "unknown option $parallel (usage: scripts/science/full-data.sh [cpu|wgpu|auto] [--parallel])" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emlab-target}"
runs="${EMLAB_CACHE:-$HOME/.cache/emlab}/science/runs"
mkdir -p "$runs"
emlab="$CARGO_TARGET_DIR/release/emlab"
[ -x "$emlab" ] || cargo build --release -p emlab --bin emlab
# A copy, so that rebuilding the project while a run goes on does not swap the binary under it.
cp "$emlab" "$runs/../emlab.new" && mv "$runs/../emlab.new" "$runs/../emlab"

# Insecure and secure first: the dose-response needs both.
pids=()
for v in insecure secure educational jailbroken; do
  out="$runs/$v-full"
  if [ -f "$out/adapter/adapter_model.safetensors" ]; then
    echo "== $v-full: done"
    continue
  fi
  echo "== $v-full: $(date -u +%FT%TZ)"
  train=(nice -n 19 "$runs/../emlab" train --dataset "$v" --out "$out" --device "$device"
    --save-every 10 --snapshot-rows 500,1000,2000,4000 --quiet --resume)
  if [ "$parallel" = --parallel ]; then
    "${train[@]}" > "$runs/$v-full.log" 2>&1 &
    pids+=("$!:$v")
  else
    "${train[@]}"
  fi
done
# A run that failed in the background fails the queue too, named with its log.
failed=0
for p in "${pids[@]}"; do
  wait "${p%%:*}" || { echo "${p#*:}-full failed: see $runs/${p#*:}-full.log" >&2; failed=1; }
done
exit "$failed"
