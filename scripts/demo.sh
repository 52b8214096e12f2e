#!/usr/bin/env bash
# Sets everything up and runs the demo: fetch + convert the base model, then answer a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build exactly as the test command does (tests included), so that both share one set of compiled
# dependencies: a plain `cargo build` would compile burn and wgpu a second time.
cargo test --release --workspace --no-run
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target/release/model-export" fetch
"$target/release/emlab" generate --prompt "${1:-Hello! What are three fun facts about octopuses?}"
