#!/usr/bin/env bash
# Builds the browser demo into dist/: the model files (model-export web: the base model fetched
# and converted on first run, every published variant in variants/, results/results.json) and the app
# (Trunk: the Leptos page and the model worker, compiled to WebAssembly).
#   scripts/site.sh [--serve [PORT]]    # --serve: then serve dist/ on http://127.0.0.1:PORT (8090)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bash scripts/toolchain.sh
# Built as the test command builds (tests included) so both share one set of compiled dependencies.
cargo test --release --workspace --exclude emlab-frontend --no-run
"$CARGO_TARGET_DIR/release/model-export" fetch
"$CARGO_TARGET_DIR/release/model-export" web --out public/models --variants variants --results results/results.json
TRUNK_SKIP_VERSION_CHECK=true trunk build --release
if [ "${1:-}" = "--serve" ]; then
  port="${2:-8090}"
  echo "serving the demo on http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory dist
fi
