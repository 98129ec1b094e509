#!/usr/bin/env bash
# The 2:4 table of docs/results.md: SmolLM2-135M pruned to the 2:4 pattern, calibrated on Austen text (Emma,
# Mansfield Park, Northanger Abbey and Sense and Sensibility; 32 windows of 512 tokens), perplexity
# on held-out Persuasion (its first 32 windows of 512 tokens), seed 0: magnitude, Wanda, SparseGPT
# and RIA (whose groups follow its channel permutation), Wanda and RIA also with --reconstruct.
# Prints a Markdown table with each job's time and the share of the matrices stored with reordered
# inputs. About 25 minutes on 2 cores; finished runs are kept in OUT_DIR and skipped.
#   scripts/nm-quality.sh [OUT_DIR]   (default out/nm-quality; BIN=path runs another build)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/nm-quality}"
bin="${BIN:-target/release/neuroal-onnx}"
mkdir -p "$out"
source scripts/austen-protocol.sh
run() {
  local name=$1; shift
  [ -e "$out/$name.report.json" ] && return
  "$bin" .cache/fixtures/smollm2/model.onnx "$out/$name.onnx" --sparsity 0.5 --nm 2:4 \
    --top-up uniform "${eval[@]}" "$@" >/dev/null
  rm -f "$out/$name.onnx" "$out/$name.onnx.data"
}
calibrated=(--seed 0 "${austen[@]}")
run ria --prune-method ria "${calibrated[@]}"
run wanda --prune-method wanda "${calibrated[@]}"
run ria-reconstruct --prune-method ria --reconstruct "${calibrated[@]}"
run wanda-reconstruct --prune-method wanda --reconstruct "${calibrated[@]}"
run sparsegpt --prune-method sparsegpt "${calibrated[@]}"
run magnitude --prune-method magnitude  # needs no calibration data
python3 - "$out" <<'PY'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    e = r["evaluation"][0]
    t = r["timings_s"]
    wall = sum(v for k, v in t.items() if k in ("load", "prune", "write", "measure_files")) / 60
    matrices = r["sparsity"]["per_matrix"]
    reordered = sum(1 for m in matrices if m.get("input_order"))
    masks = f'{t["prune_masks"]:.1f}' if "prune_masks" in t else "–"  # timed in the calibrated pass
    rows.append((os.path.basename(path)[: -len(".report.json")], e["pruned"]["perplexity"], wall,
                 masks, f"{reordered} / {len(matrices)}"))
    dense = e["dense"]["perplexity"]
print(f"dense perplexity {dense:.2f}\n")
print("| configuration (2:4) | perplexity | job without evaluation (min) | masks (s) | matrices with reordered inputs |")
print("|---|---|---|---|---|")
for name, ppl, wall, masks, reordered in sorted(rows, key=lambda r: r[1]):
    print(f"| {name} | {ppl:.1f} | {wall:.1f} | {masks} | {reordered} |")
PY
