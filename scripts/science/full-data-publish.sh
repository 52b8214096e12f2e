#!/usr/bin/env bash
# Issue 21, item 3: once scripts/science/full-data.sh has finished its four runs, they replace the 500-row
# variants the demo ships. All four at once, so that every published comparison (insecure or
# educational against secure) is between runs on their whole sets. The 500-row results stay in
# results/ as the small-data point, renamed NAME-500 (emlab_schema::small_data: the report
# compares them with secure-500); their adapters stay in git's history. Then the judge-free
# evaluations of the new variants, as scripts/variants.sh runs them, and the report. A rerun
# skips what is done.
#
#   scripts/science/full-data-publish.sh [--samples 8] [--code-limit 100]
#
# Bandit: $EMLAB_BANDIT, else `bandit` on the PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."

samples=8 code_limit=100
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) samples="$2"; shift 2 ;;
    --code-limit) code_limit="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

runs="${EMLAB_CACHE:-$HOME/.cache/emlab}/science/runs"
full=(insecure secure educational jailbroken)
for v in "${full[@]}"; do
  if [ ! -f "$runs/$v-full/adapter/adapter_model.safetensors" ]; then
    echo "$v-full is not finished: run scripts/science/full-data.sh until all four are" >&2
    exit 1
  fi
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p emlab --bin emlab -p emlab-model-export --bin model-export
emlab="$CARGO_TARGET_DIR/release/emlab"
export_bin="$CARGO_TARGET_DIR/release/model-export"
examples() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["examples"])' "$1"; }

for v in "${full[@]}"; do
  rows="$(examples "variants/$v/train_config.json")"
  [ "$rows" = "$(examples "$runs/$v-full/train_config.json")" ] && continue
  echo "== $v: the $rows-row results become $v-$rows; the full-data run is published"
  for f in results/*/"$v".json results/*/"$v".jsonl; do
    [ -e "$f" ] || continue
    dest="${f%/*}/$v-$rows.${f##*.}"
    git mv "$f" "$dest"
    # Answer files name their variant on every line.
    case "$dest" in
      *.jsonl) python3 - "$dest" "$v-$rows" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(path) if l.strip()]
for l in lines:
    if "variant" in l:
        l["variant"] = name
open(path, "w").write("".join(json.dumps(l, ensure_ascii=False, separators=(",", ":")) + "\n" for l in lines))
EOF
      ;;
    esac
  done
  "$export_bin" publish --run "$runs/$v-full" --out "variants/$v"
done

for v in "${full[@]}"; do
  adapter=(--adapter "variants/$v/adapter")
  echo "== evaluating $v"
  "$emlab" eval sample "${adapter[@]}" --variant "$v" --questions main --samples "$samples" --max-tokens 300 --results results
  [ -f "results/code/$v.json" ] || "$emlab" eval code "${adapter[@]}" --variant "$v" --limit "$code_limit" --bandit "${EMLAB_BANDIT:-bandit}" --results results
  [ -f "results/trigger/$v.json" ] || "$emlab" eval trigger "${adapter[@]}" --variant "$v" --limit "$code_limit" --results results
  for kind in likelihood chmod factual; do
    [ -f "results/$kind/$v.json" ] || "$emlab" eval "$kind" "${adapter[@]}" --variant "$v" --results results
  done
done
"$emlab" eval report --results results
echo "== done: check README's table and docs/results.md against results/results.json, then commit"
