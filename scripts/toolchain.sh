#!/usr/bin/env bash
# Installs what the browser build needs, once: the wasm32 target, Trunk 0.21.14 (0.22 needs a newer
# Rust), and wasm-bindgen-cli at exactly the version in Cargo.lock (Trunk.toml pins the same).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
command -v trunk >/dev/null && trunk --version | grep -q "0.21.14" || cargo install trunk --version 0.21.14 --locked
wbg=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
command -v wasm-bindgen >/dev/null && wasm-bindgen --version | grep -q "$wbg" || cargo install wasm-bindgen-cli --version "$wbg"
grep -q "wasm_bindgen = \"$wbg\"" Trunk.toml || { echo "Trunk.toml pins another wasm-bindgen than Cargo.lock ($wbg)" >&2; exit 1; }
cargo fetch --quiet
