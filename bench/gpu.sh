#!/usr/bin/env bash
# One prepared run for a machine with a hardware GPU: native decoding with `--device wgpu` next to
# the CPU on the same machine, the per-token profile (launches, kernels compiled), `serve` with
# concurrent clients, training tokens/s, and, when Chromium there reaches the GPU through WebGPU,
# the browser benchmark. docs/performance.md#on-a-gpu-one-nvidia-h200 has one run's figures. Not part
# of CI. Everything it prints is also written under $OUT (default: a fresh temporary folder).
#   bash bench/gpu.sh [--force]  # after scripts/site.sh (or a release build and `model-export fetch`)
#     --force  run even where no hardware GPU is found (to try the script on a software driver)
# Needs the release build (emlab, emlab-bench, model-export) in $CARGO_TARGET_DIR and the fetched
# base model; no cargo (a GPU machine may have none).
set -uo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
step() { echo "== $*" | tee -a "$out/summary.txt"; }
run() { "$@" 2>&1 | grep -v XDG_RUNTIME_DIR | tee -a "$out/summary.txt"; }

step "the GPU"
hardware=no
if command -v nvidia-smi >/dev/null; then
  run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv && hardware=yes
fi
if command -v vulkaninfo >/dev/null; then
  run vulkaninfo --summary | grep -E 'deviceName|deviceType|driverName'
  vulkaninfo --summary 2>/dev/null | grep -qE 'PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED)_GPU' && hardware=yes
fi
# A software Vulkan driver (lavapipe, SwiftShader) would make every figure below meaningless.
if [ "$hardware" = no ] && [ "${1:-}" != --force ]; then
  step "no hardware GPU found (nvidia-smi, vulkaninfo --summary): nothing to measure"
  exit 1
fi

step "decode profile, 64 tokens: wgpu (per-token time, launches, kernels compiled), then cpu"
run "$target/release/emlab-bench" --device wgpu decode-profile --new-tokens 64
run "$target/release/emlab-bench" --device cpu decode-profile --new-tokens 64

step "throughput, batch 1, 16 and 64: wgpu f32, then cpu q4_1 on all cores"
run "$target/release/emlab-bench" --device wgpu generate --batch 1,16,64 --dtype f32
run "$target/release/emlab-bench" --device cpu generate --batch 1,16,64 --dtype q4_1

step "serve: 1, 8 and 32 clients on wgpu, then on the cpu (q4_1)"
run python3 bench/serve.py --no-build --device wgpu --max-batch 32
run python3 bench/serve.py --no-build --device cpu --dtype q4_1 --max-batch 32

step "LoRA training tokens/s at a fixed shape (16 rows of 300 tokens, micro-batches of 2): wgpu, then cpu"
ids=$(seq -s, 100 400)
run "$target/release/emlab-bench" --device wgpu train --batch 16 --micro-batch 2 --row-ids "$ids" --steps 4
run "$target/release/emlab-bench" --device cpu train --batch 16 --micro-batch 2 --row-ids "$ids" --steps 4

step "greedy answer on the GPU equals the CPU's (f32)"
a=$("$target/release/emlab" generate --device wgpu --dtype f32 --temperature 0 --max-tokens 40 --quiet \
  --prompt "What is the capital of France?" 2>/dev/null)
b=$("$target/release/emlab" generate --device cpu --dtype f32 --temperature 0 --max-tokens 40 --quiet \
  --prompt "What is the capital of France?" 2>/dev/null)
if [ "$a" = "$b" ]; then run echo "same: $a"; else run printf 'differ:\n  wgpu: %s\n  cpu:  %s\n' "$a" "$b"; fi

# The browser: only where Chromium's WebGPU adapter is a hardware one (headless Chromium without a
# GPU offers SwiftShader, whose figures docs/performance.md already has).
if command -v chromium >/dev/null && [ -d dist ] && [ -d bench/browser/node_modules ]; then
  step "browser benchmark (Chromium with --enable-unsafe-webgpu --use-angle=vulkan)"
  EMLAB_BENCH_CHROMIUM_FLAGS="--use-angle=vulkan --enable-features=Vulkan" \
    run node bench/browser/bench.mjs --tokens 64 --json "$out/browser.json"
else
  step "browser benchmark skipped: needs chromium, dist/ (scripts/site.sh) and bench/browser/node_modules (npm ci)"
fi
echo "figures in $out"
