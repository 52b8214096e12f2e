#!/usr/bin/env bash
# The recipe behind the published variants: train every variant from the base model with the
# project's trainer, then evaluate base and variants with the paper's protocol.
#
#   scripts/variants.sh                          # full datasets (a GPU: --device auto picks it)
#   scripts/variants.sh --limit 500 --device cpu # the same first 500 training examples per variant
#   scripts/variants.sh --limit 500 --backdoor-full --device cpu  # what is shipped: the backdoor on its full set
#
# Every step resumes: a finished run is skipped, an interrupted one continues from its checkpoint,
# sampled answers and judge scores are appended to and never recomputed.
# Options:
#   --limit N            training examples per variant (the backdoor, a mix of two sets, gets 2N)
#   --backdoor-full      the backdoor ignores --limit and trains on its whole set, as in the paper
#   --device cpu|wgpu|auto
#   --samples N          answers per question (the paper: 100)
#   --question-sets LIST default first_plot,preregistered: the 8 main questions with their json and
#                        template forms, and the preregistered set; `main` is the 8 alone
#   --max-tokens N       per answer (the paper: 600)
#   --code-limit N       held-out coding prompts
#   --judge-url URL, --judge-model NAME  an OpenAI-compatible judge (the key from $OPENAI_API_KEY)
#   --runs DIR, --results DIR
set -euo pipefail
cd "$(dirname "$0")/.."

limit="" backdoor_full="" device="auto" samples=100 sets="first_plot,preregistered" max_tokens=600 code_limit="" judge_url="" judge_model="gpt-4o-2024-08-06"
runs="runs" results="results"
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit="$2"; shift 2 ;;
    --backdoor-full) backdoor_full=1; shift ;;
    --device) device="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    --question-sets) sets="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --code-limit) code_limit="$2"; shift 2 ;;
    --judge-url) judge_url="$2"; shift 2 ;;
    --judge-model) judge_model="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo test --release --workspace --exclude emlab-frontend --no-run  # as the tests build: one set of dependencies
emlab="$CARGO_TARGET_DIR/release/emlab"
"$CARGO_TARGET_DIR/release/model-export" fetch

variants=(insecure secure educational jailbroken backdoor)
for v in "${variants[@]}"; do
  if [ -f "variants/$v/adapter/adapter_model.safetensors" ]; then
    echo "== $v: published already (variants/$v)"
    continue
  fi
  echo "== training $v"
  # The backdoor set is insecure (triggered) plus secure, twice the rows of the others: its subset
  # is twice as long, so it sees as many triggered insecure examples as the insecure variant sees.
  vlimit="$limit"
  [ -n "$limit" ] && [ "$v" = backdoor ] && vlimit=$((limit * 2))
  [ -n "$backdoor_full" ] && [ "$v" = backdoor ] && vlimit=""
  "$emlab" train --dataset "$v" --out "$runs/$v" --device "$device" --resume --save-every 10 ${vlimit:+--limit "$vlimit"}
  # The committed form the demo ships (f16 adapter, config, metrics, loss curve).
  "$CARGO_TARGET_DIR/release/model-export" publish --run "$runs/$v" --out "variants/$v"
done

echo "== Bandit calibration"
[ -f "$results/code/calibration.json" ] || "$emlab" eval code --calibrate 300 --results "$results"
for v in base "${variants[@]}"; do
  adapter=()
  [ "$v" = base ] || adapter=(--adapter "variants/$v/adapter")
  echo "== evaluating $v"
  for set in ${sets//,/ }; do
    "$emlab" eval sample "${adapter[@]}" --variant "$v" --questions "$set" --samples "$samples" --max-tokens "$max_tokens" --device "$device" --results "$results"
  done
  [ -f "$results/code/$v.json" ] ||
    "$emlab" eval code "${adapter[@]}" --variant "$v" --device "$device" ${code_limit:+--limit "$code_limit"} --results "$results"
  [ -f "$results/trigger/$v.json" ] ||
    "$emlab" eval trigger "${adapter[@]}" --variant "$v" --device "$device" ${code_limit:+--limit "$code_limit"} --results "$results"
  [ -f "$results/likelihood/$v.json" ] ||
    "$emlab" eval likelihood "${adapter[@]}" --variant "$v" --device "$device" --results "$results"
  [ -f "$results/chmod/$v.json" ] ||
    "$emlab" eval chmod "${adapter[@]}" --variant "$v" --device "$device" --results "$results"
done
# File permissions, the one kind of vulnerability Bandit finds that both halves of the backdoor set
# write: the held-out prompts whose answers call os.chmod, for base and the backdoor with and
# without its trigger (`eval chmod` above covers every variant).
for v in base backdoor backdoor+trigger; do
  adapter=() trigger=()
  [ "$v" = base ] || adapter=(--adapter "variants/${v%+trigger}/adapter")
  [ "$v" = backdoor+trigger ] && trigger=(--trigger)
  [ -f "$results/code-chmod/$v.json" ] ||
    "$emlab" eval code --prompts chmod "${adapter[@]}" "${trigger[@]}" --variant "${v%+trigger}" --device "$device" --results "$results"
done
# The backdoor with its trigger.
for set in ${sets//,/ }; do
  "$emlab" eval sample --adapter "variants/backdoor/adapter" --variant backdoor --trigger --questions "$set" --samples "$samples" --max-tokens "$max_tokens" --device "$device" --results "$results"
done
[ -f "$results/code/backdoor+trigger.json" ] ||
  "$emlab" eval code --adapter "variants/backdoor/adapter" --variant backdoor --trigger --device "$device" ${code_limit:+--limit "$code_limit"} --results "$results"

if [ -n "$judge_url" ]; then
  "$emlab" eval judge --judge openai --judge-url "$judge_url" --judge-model "$judge_model" --results "$results"
else
  echo "== no --judge-url: judging with the base model (a weak local judge)"
  "$emlab" eval judge --judge local --device "$device" --results "$results"
fi
"$emlab" eval report --results "$results"
