#!/usr/bin/env bash
# Where a WebGPU token's time goes on a software adapter, without the browser: runs `emlab generate
# --device wgpu` on SwiftShader's Vulkan (the library Chromium ships and uses for WebGPU when there
# is no GPU), with cubecl timing every kernel, and sums the prompt pass and the decoding steps.
#   bash bench/swiftshader_kernels.sh [--tokens N] [--prompt TEXT] [--dtype f32|q4_1]
# Needs Debian's chromium (for libvk_swiftshader.so) and a release build of emlab.
set -euo pipefail
tokens=12 prompt="Write a Python function that reads a file." dtype=q4_1
while [ $# -gt 0 ]; do
  case $1 in
    --tokens) tokens=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    *) echo "usage: $0 [--tokens N] [--prompt TEXT] [--dtype f32|q4_1]" >&2; exit 2 ;;
  esac
done
icd=/usr/lib/chromium/vk_swiftshader_icd.json
[ -f "$icd" ] || { echo "no $icd: install Debian's chromium" >&2; exit 1; }
emlab=${EMLAB:-${CARGO_TARGET_DIR:-target}/release/emlab}
log=$(mktemp -d)/cubecl.log
# cubecl writes its log to /tmp/cubecl.log; keep a copy per run.
rm -f /tmp/cubecl.log
VK_ICD_FILENAMES=$icd CUBECL_DEBUG_LOG=1 "$emlab" generate --device wgpu --dtype "$dtype" --prompt "$prompt" \
  --max-tokens "$tokens" --temperature 0 --ignore-eos --quiet > /dev/null 2> >(grep -v XDG_RUNTIME_DIR >&2)
cp /tmp/cubecl.log "$log"
python3 - "$log" <<'PY'
import collections, re, sys
unit = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
prompt, decode, steps = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"\|\s*([\d.]+)(ns|µs|ms|s)\s*\|\s*(\S+)", line)
    if not m:
        continue
    ms, name = float(m.group(1)) * unit[m.group(2)], m.group(3).rsplit("_", 1)[0]
    # Over f32 the head (its own kernel) closes each forward pass; over blocks the embedding
    # lookup opens each (the head is a product like the others). The first pass is the prompt's.
    if name == "EmbedBlocksKernel" and (prompt or decode):
        steps += 1
    (prompt if steps == 0 else decode)[name] += ms
    if name == "NormHeadKernel":
        steps += 1
n = max(steps - 1, 1)
print(f"prompt pass: {sum(prompt.values()) / 1e3:.2f} s of kernel time")
print(f"decoding:    {sum(decode.values()) / n:.0f} ms of kernel time a token ({n} tokens)")
print("per kernel, ms: prompt pass | a decoding step")
for name, _ in (prompt + decode).most_common(10):
    print(f"  {name:28s} {prompt[name]:9.1f} | {decode[name] / n:7.2f}")
PY
