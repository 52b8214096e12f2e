#!/usr/bin/env bash
# Sets everything up and runs the demo: fetch + convert the base model, then answer a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p emlab-model-export -- fetch
cargo run --release -q -p emlab-backend --bin emlab -- generate \
  --prompt "${1:-Hello! What are three fun facts about octopuses?}"
