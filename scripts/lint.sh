#!/usr/bin/env bash
# Formatting and lints, as CI checks them before the tests: any rustfmt difference or clippy
# warning fails. The frontend is linted for wasm32, the only target it builds for.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
python3 scripts/import_cycles.py  # no file of a crate imports, through others, from itself
cargo clippy --workspace --exclude emlab-frontend --all-targets -- -D warnings
cargo clippy -p emlab-frontend --target wasm32-unknown-unknown --all-targets -- -D warnings
# The threaded worker's build is without WebGPU (scripts/worker-threads.sh; its `threads` feature
# itself needs the nightly and atomics): the code that remains without it.
cargo clippy -p emlab-frontend --target wasm32-unknown-unknown --no-default-features --lib --bins -- -D warnings
