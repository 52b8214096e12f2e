#!/usr/bin/env bash
# Issue 47's science: sweeps/seeds-2000.toml (insecure, secure and educational at 2,000 rows, three
# seeds each, the vulnerable-code rate and the misaligned − aligned likelihood) on this machine, at
# the lowest priority, under ~/.cache/emlab/sweeps/seeds-2000. Each run takes about 45 minutes of
# a 2-core CPU; a rerun continues every run from its checkpoint and skips what is done, then
# writes the report across seeds (report.md there).
#
#   setsid nohup scripts/science/seeds-2000.sh >> ~/.cache/emlab/sweeps/seeds-2000.log 2>&1 < /dev/null &
#   target/release/emlab sweep list --plan sweeps/seeds-2000.toml --dir ~/.cache/emlab/sweeps/seeds-2000
set -euo pipefail
cd "$(dirname "$0")/../.."

# `nice` alone does not hold a job started with setsid back: the kernel shares the CPU between
# sessions first (autogroups), so the whole session is set to the lowest priority too.
echo 19 > /proc/self/autogroup 2>/dev/null || true

jobs="${1:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emlab-target}"
cache="${EMLAB_CACHE:-$HOME/.cache/emlab}"
mkdir -p "$cache/sweeps"
# $EMLAB_BIN: an emlab built elsewhere (the default: this checkout's build).
emlab="${EMLAB_BIN:-$CARGO_TARGET_DIR/release/emlab}"
[ -x "$emlab" ] || cargo build --release -p emlab --bin emlab
# A copy, so that rebuilding the project while the sweep goes on does not swap the binary under it;
# the datasets of this checkout, wherever the binary was built.
cp "$emlab" "$cache/sweeps/emlab.new" && mv "$cache/sweeps/emlab.new" "$cache/sweeps/emlab"
export EMLAB_DATASETS="$PWD/datasets/emergent-misalignment"
bandit="${EMLAB_BANDIT:-$cache/test-venv/bin/bandit}"
[ -x "$bandit" ] || bandit=bandit

echo "== seeds-2000: $(date -u +%FT%TZ)"
nice -n 19 "$cache/sweeps/emlab" sweep local --plan sweeps/seeds-2000.toml \
  --dir "$cache/sweeps/seeds-2000" --jobs "$jobs" --bandit "$bandit" --quiet
nice -n 19 "$cache/sweeps/emlab" eval report --sweep "$cache/sweeps/seeds-2000"
