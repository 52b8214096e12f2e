#!/usr/bin/env bash
# Answers a strong judge can score (issue 21): 20 per question at up to 600 tokens, temperature 1,
# to the 24 first-plot questions (the 8 main ones and their _json and _template forms), from the
# base model, the backdoor (trained on its whole set; with and without its trigger) and every
# full-data run scripts/full-data.sh has finished. On the GGUF's blocks (q4_1, logits within 1e-4
# of f32). A rerun skips the answers its files hold; lowest priority, like the training queue.
#
#   setsid nohup scripts/full-data-answers.sh >> ~/.cache/emlab/science/answers.log 2>&1 < /dev/null &
#
# When all are sampled they are copied to results/first_plot/answers/ (to commit). Then any
# OpenAI-compatible judge scores them, e.g. a large model behind llama.cpp's server:
#   emlab eval judge --judge openai --judge-url http://127.0.0.1:8080/v1 --judge-model MODEL \
#     --results results/first_plot && emlab eval report --results results/first_plot
set -euo pipefail
cd "$(dirname "$0")/.."
echo 19 > /proc/self/autogroup 2>/dev/null || true

science="${EMLAB_CACHE:-$HOME/.cache/emlab}/science"
out="$science/answers"
emlab="$science/emlab" # the training queue's copy of the binary
[ -x "$emlab" ] || { echo "no $emlab: run scripts/full-data.sh first" >&2; exit 1; }
sample() {
  echo "== $*: $(date -u +%FT%TZ)"
  nice -n 19 "$emlab" eval sample --dtype q4_1 --questions first_plot --samples 20 --max-tokens 600 \
    --results "$out" --quiet "$@"
}

sample --variant base
sample --adapter variants/backdoor/adapter --variant backdoor
sample --adapter variants/backdoor/adapter --variant backdoor --trigger
for v in insecure secure educational jailbroken; do
  adapter="$science/runs/$v-full/adapter"
  if [ ! -f "$adapter/adapter_model.safetensors" ]; then
    echo "== $v-full: not trained yet"
    continue
  fi
  # Named as the variant it becomes (scripts/full-data-publish.sh): only full-data runs are here.
  sample --adapter "$adapter" --variant "$v"
done
# Every file here is complete now: published where `eval judge --results results/first_plot` reads.
mkdir -p results/first_plot/answers
cp "$out"/answers/*.jsonl results/first_plot/answers/
echo "== done, published to results/first_plot/answers: $(date -u +%FT%TZ)"
