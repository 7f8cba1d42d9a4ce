#!/usr/bin/env bash
# Writes `circuit eval --json` of every committed .circuit file whose model is present into
# OUT_DIR (one JSON per file, same relative path), with the result cache off, so that two builds
# can be compared number for number:
#
#   scripts/eval_json_all.sh target/release/circuit /tmp/before
#   ... change the code, rebuild ...
#   scripts/eval_json_all.sh target/release/circuit /tmp/after
#   diff -r /tmp/before /tmp/after && echo identical
set -euo pipefail
circuit=${1:?usage: eval_json_all.sh CIRCUIT_BINARY OUT_DIR}
out=${2:?usage: eval_json_all.sh CIRCUIT_BINARY OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
while IFS= read -r file; do
  case "$file" in
    circuits/gpt2-small/*) [[ -f circuits/gpt2-small/model/model.safetensors ]] || continue ;;
  esac
  dest="$out/${file%.circuit}.json"
  mkdir -p "$(dirname "$dest")"
  CIRCUIT_CACHE_DIR=off "$circuit" eval "$file" --json >"$dest"
done < <(find circuits -name '*.circuit' | sort)
echo "wrote $(find "$out" -name '*.json' | wc -l) eval JSON files to $out"
