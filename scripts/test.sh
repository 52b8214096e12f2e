#!/usr/bin/env bash
# Runs every test (fetches and converts the base model on first use, ~93 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace "$@"
