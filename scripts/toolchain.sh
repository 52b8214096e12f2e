#!/usr/bin/env bash
# Installs what the browser build needs, once: the wasm32 target, the nightly that builds the
# threaded worker (frontend/threads-toolchain), Trunk 0.21.14 (0.22 needs a newer Rust), and wasm-bindgen-cli at exactly the version in Cargo.lock (Trunk.toml pins the same).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if command -v rustup >/dev/null; then
  rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]; then
  echo "the wasm32-unknown-unknown target is missing (install Rust with rustup, then: rustup target add wasm32-unknown-unknown)" >&2
  exit 1
fi
# The threaded worker's compiler (scripts/worker-threads.sh): a pinned nightly with the standard
# library's source, for this one build (docs/browser.md says why).
threads_toolchain="$(cat frontend/threads-toolchain)"
if command -v rustup >/dev/null; then
  rustup run "$threads_toolchain" rustc --print sysroot >/dev/null 2>&1 &&
    [ -d "$(rustup run "$threads_toolchain" rustc --print sysroot)/lib/rustlib/src/rust/library" ] &&
    [ -d "$(rustup run "$threads_toolchain" rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ] ||
    rustup toolchain install "$threads_toolchain" --profile minimal --component rust-src --target wasm32-unknown-unknown
else
  echo "rustup is needed for the threaded worker's pinned toolchain ($threads_toolchain)" >&2
  exit 1
fi
command -v trunk >/dev/null && trunk --version | grep -q "0.21.14" || cargo install trunk --version 0.21.14 --locked
wbg=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
command -v wasm-bindgen >/dev/null && wasm-bindgen --version | grep -q "$wbg" || cargo install wasm-bindgen-cli --version "$wbg"
grep -q "wasm_bindgen = \"$wbg\"" Trunk.toml || { echo "Trunk.toml pins another wasm-bindgen than Cargo.lock ($wbg)" >&2; exit 1; }
cargo fetch --quiet
# binaryen's wasm-opt 132 from npm (Debian's wasm-opt 108 breaks the app): it shrinks the model
# worker under the 24 MiB file limit of strict static hosts.
tools="${EMLAB_CACHE:-$HOME/.cache/emlab}/tools"
[ -x "$tools/node_modules/.bin/wasm-opt" ] && "$tools/node_modules/.bin/wasm-opt" --version | grep -q "version 132" ||
  { mkdir -p "$tools" && npm install --prefix "$tools" --no-audit --no-fund --silent binaryen@132.0.0; }
