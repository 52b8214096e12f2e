#!/usr/bin/env bash
# Answers a strong judge can score (issue 21, issue 50): 20 per question at up to 600 tokens to the
# 24 first-plot questions (the 8 main ones and their _json and _template forms), from the base
# model, the backdoor (trained on its whole set; with and without its trigger) and the four
# full-data variants, at one of two settings:
#   paper     temperature 1, top-p 1, as the paper sampled -> results/first_plot/answers/
#   readable  temperature 0.3, top-p 0.9, the page's default -> results/first_plot_readable/answers/
# On the GGUF's blocks (q4_1, logits within 1e-4 of f32). A rerun skips the answers its files hold;
# lowest priority, like the training queue.
#
#   setsid nohup nice -n 19 scripts/science/full-data-answers.sh readable >> ~/.cache/emlab/science/answers-readable.log 2>&1 < /dev/null &
#
# Each variant's file is published as soon as it is complete (to commit). Then any
# OpenAI-compatible judge scores them, e.g. a large model behind llama.cpp's server:
#   emlab eval judge --judge openai --judge-url http://127.0.0.1:8080/v1 --judge-model MODEL \
#     --results results/first_plot_readable
#   emlab eval report --results results/first_plot --beside results/first_plot_readable
set -euo pipefail
cd "$(dirname "$0")/../.."
# `nice` alone does not hold a job started with setsid back: the kernel shares the CPU between
# sessions first (autogroups), so the whole session is set to the lowest priority too.
echo 19 > /proc/self/autogroup 2>/dev/null || true

setting="${1:-paper}"
science="${EMLAB_CACHE:-$HOME/.cache/emlab}/science"
case "$setting" in
  paper)
    out="$science/answers" publish=results/first_plot/answers flags=(--temperature 1 --top-p 1) ;;
  readable)
    out="$science/answers-readable" publish=results/first_plot_readable/answers
    flags=(--temperature 0.3 --top-p 0.9) ;;
  *) echo "unknown setting $setting (usage: scripts/science/full-data-answers.sh [paper|readable])" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emlab-target}"
[ -x "$CARGO_TARGET_DIR/release/emlab" ] || cargo build --release -p emlab --bin emlab
# A copy, so that rebuilding the project while it samples does not swap the binary under it.
mkdir -p "$science" "$publish"
emlab="$science/emlab-answers"
cp "$CARGO_TARGET_DIR/release/emlab" "$emlab.new" && mv "$emlab.new" "$emlab"

sample() {
  local name="$1"
  shift
  echo "== $name at $setting: $(date -u +%FT%TZ)"
  nice -n 19 "$emlab" eval sample --dtype q4_1 --questions first_plot --samples 20 --max-tokens 600 \
    "${flags[@]}" --results "$out" --quiet "$@"
  # Only a whole file is published: a judge's report on it counts every question alike.
  cp "$out/answers/$name.jsonl" "$publish/$name.jsonl.new" && mv "$publish/$name.jsonl.new" "$publish/$name.jsonl"
  echo "== $name published to $publish: $(date -u +%FT%TZ)"
}

# The tuned variants first: they answer briefly (median 51-71 tokens at temperature 1, base 293),
# so on a CPU their files are whole long before base's.
for v in insecure secure educational jailbroken; do
  # The published full-data variants (scripts/science/full-data-publish.sh put them under variants/).
  sample "$v" --adapter "variants/$v/adapter" --variant "$v"
done
sample backdoor --adapter variants/backdoor/adapter --variant backdoor
sample backdoor+trigger --adapter variants/backdoor/adapter --variant backdoor --trigger
sample base --variant base
echo "== done at $setting: $(date -u +%FT%TZ)"
