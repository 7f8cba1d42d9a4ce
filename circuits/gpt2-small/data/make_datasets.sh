#!/usr/bin/env bash
# Writes the template-form sequence-continuation datasets of the GPT-2 small circuits:
# prompts as in the research ("Van done in 1. Hat done in 2. ... Sun done in" -> " 5") whose every
# word is one GPT-2 token, so every clean and reference prompt is 23 tokens long and position-wise
# mean ablation applies. (Some of the generator's fillers are two GPT-2 tokens; with them the
# prompts are 23-25 tokens long, and reference statistics need `align by label`, matched per
# labelled slot instead of per token index.)
#
# Needs only the tokenizer (the committed GPT-2 tokenizer fixture), never the weights. Usage, from
# the crate root after `cargo build`:  circuits/gpt2-small/data/make_datasets.sh
# Deterministic: re-running it rewrites identical files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
circuit="${CIRCUIT:-$root/target/debug/circuit}"
tokenizer_dir="$(mktemp -d)"
trap 'rm -rf "$tokenizer_dir"' EXIT
cp "$here/../model/config.json" "$root/tests/fixtures/gpt2-tokenizer/tokenizer.json" "$tokenizer_dir/"

for kind in numerals number_words months; do
  all="$tokenizer_dir/$kind.jsonl"
  "$circuit" dataset "seqcont.$kind" --form template --n 400 --seed 0 >"$all"
  # Indices of the records whose clean prompt and paired reference prompt are both 23 tokens.
  keep=$("$circuit" dataset inspect "$all" --model "$tokenizer_dir" --json | jq -r '
    [.prompts[] | {key: "\(.index)", value: (.tokens | length)} ] as $p
    | [.prompts[] | select(.set == "clean") | .index] | unique
    | map(select(. as $i | [$p[] | select(.key == "\($i)") | .value] | all(. == 23)))
    | .[:64] | map(. + 1) | map(tostring) | join("p;") + "p"')
  sed -n "$keep" "$all" >"$here/${kind}_template.jsonl"
  echo "$kind: $(wc -l <"$here/${kind}_template.jsonl") prompts"
done
