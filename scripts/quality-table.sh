#!/usr/bin/env bash
# The base-method table of docs/results.md: SmolLM2-135M pruned with every base method at 50% and 70% (uniform
# allocation), calibrated on 32 windows of 512 tokens from four Austen novels, evaluated on the
# first 64 windows of 512 tokens of Persuasion (never calibration text). Prints a Markdown table.
#   scripts/quality-table.sh [OUT_DIR]        (after `make setup build`; about 15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/quality}"
mkdir -p "$out"
fx=.cache/fixtures
books=$fx/austen
calib=(--calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt
       --calib $books/sense_and_sensibility.txt --nsamples 32 --seed 0)
eval=(--eval-text $books/persuasion.txt --eval-windows 64 --seqlen 512)
for sparsity in 0.5 0.7; do
  for method in magnitude wanda sparsegpt multiflow; do
    report="$out/$method-$sparsity.report.json"
    [ -e "$report" ] && continue
    extra=()
    [ "$method" != magnitude ] && extra=("${calib[@]}")
    target/release/neuroal-onnx $fx/smollm2/model.onnx "$out/$method-$sparsity.onnx" --sparsity $sparsity \
      --prune-method $method --top-up uniform "${extra[@]}" "${eval[@]}" --quiet >/dev/null
    rm -f "$out/$method-$sparsity.onnx" "$out/$method-$sparsity.onnx.data"
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
rows = {}
dense = None
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    e = r["evaluation"][0]
    dense = e["dense"]["perplexity"]
    rows[(r["method"]["prune_method"], r["method"]["sparsity"])] = (e["pruned"]["perplexity"], r["sparsity"]["measured"], r["timings_s"]["prune"])
print(f"| method | 50% | 70% |\n|---|---|---|\n| dense | {dense:.2f} | {dense:.2f} |")
for m in ["magnitude", "wanda", "sparsegpt", "multiflow"]:
    cells = [f"{rows[(m, s)][0]:.2f}" if (m, s) in rows else "–" for s in (0.5, 0.7)]
    print(f"| {m} | {cells[0]} | {cells[1]} |")
print()
print("pruning wall time (s): " + ", ".join(f"{m} {s}: {v[2]:.1f}" for (m, s), v in sorted(rows.items())))
PY
