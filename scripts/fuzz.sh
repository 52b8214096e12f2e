#!/usr/bin/env bash
# Coverage-guided fuzzing of one parser with AFL++ (cargo-afl), resumable; every crash found is
# copied into fuzz/regressions/TARGET/, which CI replays (fuzz/tests/fuzz.rs) once committed.
#
#   scripts/fuzz.sh TARGET [SECONDS]      # targets: gguf, safetensors, ... (scripts/fuzz.sh list)
#   scripts/fuzz.sh all [SECONDS]         # each target in turn, SECONDS each
#
# Needs AFL++ and cargo-afl: apt-get install afl++ && cargo install cargo-afl.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET|all|list [SECONDS]}
secs=${2:-600}
export CARGO_TARGET_DIR=${EMLAB_AFL_TARGET_DIR:-$HOME/.cache/emlab/afl-target}
out_root=${EMLAB_FUZZ_OUT:-$HOME/.cache/emlab/fuzz}

cargo afl build --release --quiet -p emlab-fuzz --features afl
bin=$CARGO_TARGET_DIR/release/emlab-fuzz
if [ "$target" = list ]; then "$bin" list; exit 0; fi
targets=$target
[ "$target" = all ] && targets=$("$bin" list | awk '{print $1}')

for t in $targets; do
  out=$out_root/$t
  mkdir -p "$out"
  # `-i -` resumes the queue of an earlier run.
  input=fuzz/corpus/$t
  [ -d "$out/default/queue" ] && input=-
  echo "== $t: ${secs}s, findings in $out"
  # No core dumps to wait for, no CPU governor to check, no TTY UI; memory is bounded by the
  # harness's own allocator (an allocation over 1 GiB aborts), not by AFL's address-space limit.
  AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    AFL_SKIP_CRASHES=1 AFL_AUTORESUME=1 \
    cargo afl fuzz -i "$input" -o "$out" -V "$secs" -m none -t 5000 -- "$bin" run "$t" \
    > "$out/afl.log" 2>&1 || { tail -20 "$out/afl.log"; exit 1; }
  stats=$out/default/fuzzer_stats
  grep -E '^(execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs) ' "$stats" | sed 's/^/   /'
  shopt -s nullglob
  for c in "$out"/default/crashes/id:*; do
    mkdir -p "fuzz/regressions/$t"
    dest=fuzz/regressions/$t/afl-$(sha256sum "$c" | cut -c1-12)
    [ -e "$dest" ] || { cp "$c" "$dest"; echo "   crash saved: $dest"; }
  done
done
