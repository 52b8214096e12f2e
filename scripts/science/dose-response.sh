#!/usr/bin/env bash
# The dose-response of issue 21: the judge-free probes (the likelihood of the paper's misaligned
# answers against their aligned counterparts, the chmod probe, and Bandit's vulnerable-code rate on
# the first 100 held-out coding prompts, greedy) on the full-data insecure and secure runs, at every
# snapshot (500, 1,000, 2,000, 4,000 rows) as soon as it is saved and at the end. Each result is
# named VARIANT@ROWS (rows seen) and lands in the cache's science/dose/, in the layout
# `emlab eval report --results` reads; a rerun skips what is there. Lowest priority, like the
# training queue (scripts/science/full-data.sh) whose runs it reads. Bandit: $EMLAB_BANDIT, else `bandit`.
#
#   setsid nohup scripts/science/dose-response.sh >> ~/.cache/emlab/science/dose.log 2>&1 < /dev/null &
set -euo pipefail
cd "$(dirname "$0")/../.."
echo 19 > /proc/self/autogroup 2>/dev/null || true

science="${EMLAB_CACHE:-$HOME/.cache/emlab}/science"
out="$science/dose"
emlab="$science/emlab" # the training queue's copy of the binary
[ -x "$emlab" ] || { echo "no $emlab: run scripts/science/full-data.sh first" >&2; exit 1; }
rows_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

for v in insecure secure; do
  run="$science/runs/$v-full"
  points=()
  for snap in "$run"/snapshots/rows-*; do
    [ -f "$snap/snapshot.json" ] && points+=("$(rows_of "$snap/snapshot.json" rows_seen) $snap")
  done
  if [ -f "$run/adapter/adapter_model.safetensors" ]; then
    points+=("$(rows_of "$run/train_config.json" examples) $run/adapter")
  fi
  [ ${#points[@]} -gt 0 ] || { echo "== $v-full: no snapshot yet"; continue; }
  for point in "${points[@]}"; do
    read -r rows adapter <<< "$point"
    for kind in likelihood chmod code; do
      [ -f "$out/$kind/$v@$rows.json" ] && continue
      echo "== $kind $v@$rows: $(date -u +%FT%TZ)"
      extra=()
      [ "$kind" = code ] && extra=(--limit 100 --bandit "${EMLAB_BANDIT:-bandit}")
      # Answers written whole (atomically) but not yet scanned: scan them, do not sample again.
      [ "$kind" = code ] && [ -f "$out/code/$v@$rows.jsonl" ] && extra+=(--rescan)
      nice -n 19 "$emlab" eval "$kind" --adapter "$adapter" --variant "$v@$rows" --results "$out" \
        --quiet "${extra[@]}"
    done
  done
done
echo "== done: $(date -u +%FT%TZ)"
