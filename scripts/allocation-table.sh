#!/usr/bin/env bash
# The README's allocation table: SmolLM2-135M at the given sparsities, Wanda with every allocation
# (uniform, OWL, AlphaPruning, DSnoT, NeuroAL block/row/both), magnitude and SparseGPT with
# uniform, OWL and NeuroAL; calibration 32 windows of 512 tokens from four Austen novels,
# evaluation on the first 64 windows of 512 tokens of Persuasion. Prints a Markdown table.
#   scripts/allocation-table.sh [OUT_DIR] [SPARSITY ...]   (default 0.6 0.7; hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/allocation}"
shift || true
sparsities=("$@")
[ ${#sparsities[@]} -eq 0 ] && sparsities=(0.6 0.7)
mkdir -p "$out"
fx=.cache/fixtures
books=$fx/austen
calib=(--calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt
       --calib $books/sense_and_sensibility.txt --nsamples 32 --seed 0)
common=(--eval-text $books/persuasion.txt --eval-windows 64 --seqlen 512 --quiet)
configs=(  # most informative first, so that a partial run already answers the main question
  "wanda neuroal both" "wanda uniform both" "wanda owl both" "wanda alpha both" "wanda dsnot both"
  "sparsegpt neuroal both" "magnitude neuroal both" "wanda neuroal block" "wanda neuroal row"
  "sparsegpt uniform both" "sparsegpt owl both" "magnitude uniform both" "magnitude owl both"
)
for sparsity in "${sparsities[@]}"; do
  for config in "${configs[@]}"; do
    read -r method top_up step <<<"$config"
    name="$method-$top_up-$step-$sparsity"
    [ -e "$out/$name.report.json" ] && continue
    data=("${calib[@]}")
    [ "$method $top_up" = "magnitude uniform" ] && data=()  # needs no calibration data
    target/release/neuroal-onnx $fx/smollm2/model.onnx "$out/$name.onnx" --sparsity "$sparsity" \
      --prune-method "$method" --top-up "$top_up" --neuroal-step "$step" "${data[@]}" "${common[@]}" >/dev/null
    rm -f "$out/$name.onnx" "$out/$name.onnx.data"
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
rows, sparsities = {}, set()
for path in glob.glob(os.path.join(sys.argv[1], "*.report.json")):
    r = json.load(open(path))
    m, s = r["method"], r["method"]["sparsity"]
    step = ""
    if m["top_up"] == "neuroal":
        step = " (" + r["command_line"][r["command_line"].index("--neuroal-step") + 1] + ")"
    key = f'{m["prune_method"]} + {m["top_up"]}{step}'
    search = r.get("search") or {}
    rows.setdefault(key, {})[s] = (r["evaluation"][0]["pruned"]["perplexity"], r["sparsity"]["measured"],
                                   search.get("block_lambda"), search.get("row_lambda"), r["timings_s"].get("search"))
    sparsities.add(s)
cols = sorted(sparsities)
print("| method + allocation | " + " | ".join(f"{int(s*100)}%" for s in cols) + " |")
print("|---|" + "---|" * len(cols))
for key in sorted(rows):
    cells = []
    for s in cols:
        v = rows[key].get(s)
        if v is None:
            cells.append("–")
            continue
        extra = ""
        if v[2] is not None or v[3] is not None:
            extra = f" (λ {v[2] if v[2] is not None else '–'}/{v[3] if v[3] is not None else '–'}, search {v[4]:.0f} s)"
        cells.append(f"{v[0]:.2f}{extra}")
    print(f"| {key} | " + " | ".join(cells) + " |")
PY
