#!/usr/bin/env bash
# Runs every test (fetches and converts the base model on first use, ~93 MB): the Rust tests, then
# the browser tests when Chromium, chromedriver and Node are installed (always in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace --exclude emlab-frontend "$@"
if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v node >/dev/null; then
  bash scripts/test-browser.sh
elif [ "${EMLAB_REQUIRE_BROWSER:-}" = 1 ]; then
  echo "the browser tests need chromium, chromium-driver and nodejs (npm)" >&2
  exit 1
else
  echo "skipped the browser tests: install chromium, chromium-driver and nodejs (npm) to run them"
fi
