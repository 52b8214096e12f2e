#!/usr/bin/env bash
# Formatting and lints, as CI checks them before the tests: any rustfmt difference or clippy
# warning fails. The frontend is linted for wasm32, the only target it builds for.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
# The page's `view!` markup, which rustfmt leaves alone (leptosfmt.toml; .ci/run installs it).
command -v leptosfmt >/dev/null || { echo "leptosfmt is needed: cargo install leptosfmt --version 0.1.33 --locked" >&2; exit 1; }
leptosfmt --check frontend/src >/dev/null || { leptosfmt --check frontend/src | grep -A20 "is not correctly formatted"; exit 1; }
python3 scripts/import_cycles.py  # no file of a crate imports, through others, from itself
cargo clippy --workspace --exclude emlab-frontend --all-targets -- -D warnings
cargo clippy -p emlab-frontend --target wasm32-unknown-unknown --all-targets -- -D warnings
# The threaded worker's build is without WebGPU (scripts/worker-threads.sh; its `threads` feature
# itself needs the nightly and atomics): the code that remains without it.
cargo clippy -p emlab-frontend --target wasm32-unknown-unknown --no-default-features --lib --bins -- -D warnings
