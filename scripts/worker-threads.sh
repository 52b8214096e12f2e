#!/usr/bin/env bash
# Builds the model worker with threads into a site folder (scripts/site.sh calls it after Trunk):
# the same worker as Trunk's, with the `threads` feature (frontend/src/pool.rs) and without WebGPU
# (the page starts it only to run on the CPU: wgpu's browser types cannot cross threads), as an ES module
# (wasm-bindgen's web target, which wasm-bindgen-rayon needs), named by content hash and announced
# in index.html's <meta name="emlab-worker-threads">.
#
# Wasm threads need the standard library rebuilt with atomics, which only a nightly compiler does
# (`-Z build-std`): the one pinned in frontend/threads-toolchain, for this build only. Everything
# else stays on stable. docs/browser.md says why.
#   scripts/worker-threads.sh DIST_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dist="${1:?usage: scripts/worker-threads.sh DIST_DIR}"
toolchain="$(cat frontend/threads-toolchain)"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# Its own folder: another compiler and another std, so nothing is shared with the stable builds.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/threads"
# The config file's wasm flags plus atomics and bulk memory for every crate; for the binary, a
# shared memory that the threads import, room to grow to 4 GiB like an unshared memory (a shared
# one must declare its maximum), and the thread-local storage symbols wasm-bindgen sets up per thread.
RUSTFLAGS="--cfg getrandom_backend=\"wasm_js\" -C target-feature=+simd128,+atomics,+bulk-memory" \
  cargo "+$toolchain" rustc --profile web --target wasm32-unknown-unknown --target-dir "$target_dir" \
  -p emlab-frontend --bin worker --no-default-features --features threads -Z build-std=panic_abort,std -- \
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
  -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
out="$(mktemp -d)"
wasm-bindgen --target web --no-typescript --out-dir "$out" --out-name worker-threads \
  "$target_dir/wasm32-unknown-unknown/web/worker.wasm"
# As site.sh shrinks the single-threaded worker (with the features a threaded module uses).
wasm_opt="${EMLAB_CACHE:-$HOME/.cache/emlab}/tools/node_modules/.bin/wasm-opt"
"$wasm_opt" -O1 --strip-debug --enable-threads --enable-bulk-memory --enable-simd \
  --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
  "$out/worker-threads_bg.wasm" -o "$out/worker-threads_bg.opt.wasm"
mv "$out/worker-threads_bg.opt.wasm" "$out/worker-threads_bg.wasm"
h=$(cat "$out/worker-threads.js" "$out/worker-threads_bg.wasm" | sha256sum | cut -c1-16)
# The module fetches its wasm relative to itself (import.meta.url), by the hashed name.
sed -i "s|worker-threads_bg.wasm|worker-threads-${h}_bg.wasm|g" "$out/worker-threads.js"
mv "$out/worker-threads_bg.wasm" "$dist/worker-threads-${h}_bg.wasm"
mv "$out/worker-threads.js" "$dist/worker-threads-$h.js"
# wasm-bindgen-rayon's script that each pool thread runs (it imports the module by URL).
cp -r "$out/snippets" "$dist/"
rm -rf "$out"
# The worker's entry: instantiating the module runs the worker's main. A file of its own, since
# the pool's threads import the module too and must not start a second worker in themselves.
# A failed start rejects the top-level await, which the page sees as the worker's error event
# (it then starts the single-threaded worker).
printf 'import init from "./worker-threads-%s.js";\nawait init();\n' "$h" > "$dist/worker-threads-loader-$h.js"
sed -i "s|<head>|<head><meta name=\"emlab-worker-threads\" content=\"./worker-threads-loader-$h.js\">|" "$dist/index.html"
echo "threaded worker: $dist/worker-threads-loader-$h.js"
