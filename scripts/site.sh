#!/usr/bin/env bash
# Builds the browser demo into dist/, one folder any static host can serve from any sub-path: the
# model files (model-export web: the base model fetched and converted on first run, every published
# variant in variants/, results/results.json) and the app (Trunk: the Leptos page and the model
# worker, compiled to WebAssembly). Every file but index.html and models/manifest.json is named by
# its content hash.
#   scripts/site.sh [--max-shard-mb N] [--serve [PORT]] [--offline-bundle DIR]
#     --max-shard-mb N     largest file, in MiB (default 24: the strictest common host limit)
#     --serve [PORT]       then serve dist/ on http://127.0.0.1:PORT (default 8090)
#     --offline-bundle DIR then copy the site to DIR with instructions (a USB stick, an intranet)
set -euo pipefail
cd "$(dirname "$0")/.."
serve="" bundle="" shard_mb=24
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=8090; if [[ "${2:-}" =~ ^[0-9]+$ ]]; then serve="$2"; shift; fi; shift ;;
    --offline-bundle) bundle="$2"; shift 2 ;;
    --max-shard-mb) shard_mb="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"  # where toolchain.sh installs trunk and wasm-bindgen
bash scripts/toolchain.sh
# Built as the test command builds (tests included) so both share one set of compiled dependencies.
cargo test --release --workspace --exclude emlab-frontend --no-run
"$CARGO_TARGET_DIR/release/model-export" fetch
"$CARGO_TARGET_DIR/release/model-export" web --out public/models --variants variants --results results/results.json --max-shard-mb "$shard_mb"
TRUNK_SKIP_VERSION_CHECK=true trunk build --release
# Trunk names the worker's files without a hash (the page must know the name). Name them by
# content, like everything else, so HTTP caches never pair an old worker with a new page; the page
# reads the loader's name from <meta name="emlab-worker">.
# First, wasm-opt: -O1 without debug names takes the worker from ~31 MB to ~20 MB in a minute or two
# (-Oz saves 4 MB more in 6 minutes).
"${EMLAB_CACHE:-$HOME/.cache/emlab}/tools/node_modules/.bin/wasm-opt" -O1 --strip-debug dist/worker_bg.wasm -o dist/worker_bg.opt.wasm
mv dist/worker_bg.opt.wasm dist/worker_bg.wasm
h=$(cat dist/worker.js dist/worker_bg.wasm | sha256sum | cut -c1-16)
mv dist/worker.js "dist/worker-$h.js"
mv dist/worker_bg.wasm "dist/worker-${h}_bg.wasm"
sed -i "s|./worker.js|./worker-$h.js|; s|./worker_bg.wasm|./worker-${h}_bg.wasm|" dist/worker_loader.js
mv dist/worker_loader.js "dist/worker_loader-$h.js"
sed -i "s|<head>|<head><meta name=\"emlab-worker\" content=\"./worker_loader-$h.js\">|" dist/index.html
# The same worker with threads, for cross-origin isolated pages.
bash scripts/worker-threads.sh dist
if [ -n "$bundle" ]; then
  mkdir -p "$bundle"
  cp -r dist/. "$bundle/"
  cat > "$bundle/OPEN-ME.txt" <<'TXT'
Emergent Misalignment Lab: the demo as one folder, for a USB stick or a school's intranet.

Browsers only run it from a web server (not from a file:// address). Any static server works,
from any sub-folder. With Python 3, in this folder:

    python3 -m http.server 8000

then open http://localhost:8000/ . The models (about 150 MB) are in models/ and load from this
folder only: nothing is fetched from the internet. Browsers with WebGPU run them on the GPU, the
others on the CPU (slower). The tuned variants say harmful things by design; see the page's notes.
TXT
  echo "offline bundle: $bundle (open OPEN-ME.txt)"
fi
if [ -n "$serve" ]; then
  echo "serving the demo on http://127.0.0.1:$serve/ (Ctrl-C stops)"
  # With the headers that make the page cross-origin isolated (threads without the service worker).
  exec python3 - "$serve" <<'PY'
import functools, http.server, sys
class Isolated(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()
handler = functools.partial(Isolated, directory="dist")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
fi
