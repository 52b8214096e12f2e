#!/usr/bin/env bash
# Sets everything up and runs the demo: installs the browser toolchain (wasm32 target, Trunk,
# wasm-bindgen-cli), fetches and converts the base model, exports the browser files (weights,
# published adapters and results), builds the site and serves it on http://127.0.0.1:PORT.
#   scripts/demo.sh [PORT]      (default 8090)
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/site.sh --serve "${1:-8090}"
