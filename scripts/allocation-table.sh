#!/usr/bin/env bash
# The allocation tables of docs/results.md and the README's comparison: a real model at the given sparsities, Wanda with
# every allocation (uniform, OWL, AlphaPruning, DSnoT, NeuroAL block/row/both), magnitude and SparseGPT
# with uniform, OWL and NeuroAL; calibration 32 windows of 512 tokens from four Austen novels,
# evaluation on the first EVAL_WINDOWS (64) windows of 512 tokens of Persuasion. Prints a Markdown
# table: each cell gives the perplexity per seed, NeuroAL's λ, and the job's minutes without evaluation.
#   [MODEL=smollm2|gemma3] [EVAL_WINDOWS=64] [SEEDS="0"] [CONFIGS=...] scripts/allocation-table.sh [OUT_DIR] [SPARSITY ...]
# (default 0.6 0.7; hours on 2 cores). MODEL is a fixture under .cache/fixtures. With several SEEDS,
# every configuration runs once per calibration seed and the table gives each seed's perplexity.
# A configuration is "METHOD TOP_UP STEP", with a fourth word "reconstruct" for --reconstruct.
# CONFIGS=comparison runs the comparison of base scores and allocations, each with and without
# --reconstruct where it applies: {magnitude, wanda, sparsegpt, ria} x {uniform, owl, dlp, alpha,
# neuroal, evo} (about 5 hours on SmolLM2 per sparsity on 2 cores; use EVAL_WINDOWS=32).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${MODEL:-smollm2}"
out="${1:-out/allocation-$model}"
shift || true
sparsities=("$@")
[ ${#sparsities[@]} -eq 0 ] && sparsities=(0.6 0.7)
read -r -a seeds <<<"${SEEDS:-0}"
mkdir -p "$out"
fx=.cache/fixtures
books=$fx/austen
calib=(--calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt
       --calib $books/sense_and_sensibility.txt --nsamples 32)
common=(--eval-text $books/persuasion.txt --eval-windows "${EVAL_WINDOWS:-64}" --seqlen 512 --quiet)
configs=(  # most informative first, so that a partial run already answers the main question
  "wanda neuroal both" "wanda uniform both" "wanda owl both" "wanda alpha both" "wanda dsnot both"
  "sparsegpt neuroal both" "magnitude neuroal both" "wanda neuroal block" "wanda neuroal row"
  "sparsegpt uniform both" "sparsegpt owl both" "magnitude uniform both" "magnitude owl both"
)
# The comparison, the rows that answer the most first: the headline rows, then each score's cheap
# allocations, then re-fitting where it applies (SparseGPT updates its own weights; evo ranks
# score-based masks, so not with SparseGPT). Evo runs with its default step, block (the search
# alone); every other allocation with both.
comparison=("wanda neuroal both" "wanda evo block" "sparsegpt neuroal both" "wanda neuroal both reconstruct"
  "wanda evo block reconstruct" "ria neuroal both" "ria neuroal both reconstruct")
step_of() { [ "$1" = evo ] && echo block || echo both; }
for method in wanda sparsegpt ria magnitude; do
  for top_up in uniform owl dlp alpha neuroal evo; do
    [ "$method $top_up" = "sparsegpt evo" ] && continue
    comparison+=("$method $top_up $(step_of $top_up)")
  done
done
for method in wanda ria magnitude; do
  for top_up in uniform owl dlp alpha neuroal evo; do comparison+=("$method $top_up $(step_of $top_up) reconstruct"); done
done
# CONFIGS="wanda uniform both,wanda neuroal both" runs only those, in that order; a configuration
# already run (the comparison repeats its first rows) runs once.
if [ "${CONFIGS:-}" = comparison ]; then configs=("${comparison[@]}")
elif [ -n "${CONFIGS:-}" ]; then IFS=',' read -r -a configs <<<"$CONFIGS"; fi
for seed in "${seeds[@]}"; do
  for sparsity in "${sparsities[@]}"; do
    for config in "${configs[@]}"; do
      read -r method top_up step refit <<<"$config"
      name="$method-$top_up-$step-$sparsity-seed$seed"
      extra=()
      [ "${refit:-}" = reconstruct ] && { name="$method-$top_up-$step-reconstruct-$sparsity-seed$seed"; extra=(--reconstruct); }
      [ -e "$out/$name.report.json" ] && continue
      data=("${calib[@]}" --seed "$seed")
      # Magnitude with uniform or AlphaPruning allocation needs no calibration data.
      case "$method $top_up ${refit:-}" in "magnitude uniform "|"magnitude alpha ") data=() ;; esac
      target/release/neuroal-onnx $fx/$model/model.onnx "$out/$name.onnx" --sparsity "$sparsity" \
        --prune-method "$method" --top-up "$top_up" --neuroal-step "$step" "${data[@]}" "${extra[@]}" \
        "${common[@]}" >/dev/null
      rm -f "$out/$name.onnx" "$out/$name.onnx.data" "$out/$name.onnx_data"
    done
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
rows, sparsities, dense = {}, set(), set()
for path in glob.glob(os.path.join(sys.argv[1], "*.report.json")):
    r = json.load(open(path))
    m, s = r["method"], r["method"]["sparsity"]
    step = ""
    if m["top_up"] == "neuroal":
        step = " (" + r["command_line"][r["command_line"].index("--neuroal-step") + 1] + ")"
    elif m["top_up"] == "evo":  # whether NeuroAL's row step followed the search, as it ran
        step = " (both)" if (r.get("search") or {}).get("row_lambda") is not None else " (block)"
    key = f'{m["prune_method"]} + {m["top_up"]}{step}' + (" + reconstruct" if m.get("reconstruct") else "")
    seed = int(r["command_line"][r["command_line"].index("--seed") + 1]) if "--seed" in r["command_line"] else None
    search = r.get("search") or {}
    evaluation = r["evaluation"][0]
    dense.add(round(evaluation["dense"]["perplexity"], 2))
    minutes = sum(v for k, v in r["timings_s"].items()
                  if k in ("load", "generate_calibration", "prune", "write", "measure_files")) / 60
    rows.setdefault(key, {}).setdefault(s, []).append(
        (seed, evaluation["pruned"]["perplexity"], search.get("block_lambda"), search.get("row_lambda"),
         minutes))
    sparsities.add(s)
cols = sorted(sparsities)
print(f"dense perplexity: {', '.join(f'{d:.2f}' for d in sorted(dense))}")
print("| method + allocation | " + " | ".join(f"{int(s*100)}%" for s in cols) + " |")
print("|---|" + "---|" * len(cols))
for key in sorted(rows):
    cells = []
    for s in cols:
        runs = sorted(rows[key].get(s, []), key=lambda v: (v[0] is None, v[0]))
        if not runs:
            cells.append("–")
            continue
        ppl = " / ".join(f"{v[1]:.2f}" for v in runs)
        if len(runs) > 1:
            ppl += f" (mean {sum(v[1] for v in runs) / len(runs):.2f})"
        lambdas = [f"{v[2] if v[2] is not None else '–'}/{v[3] if v[3] is not None else '–'}"
                   for v in runs if v[2] is not None or v[3] is not None]
        minutes = ", ".join(f"{v[4]:.1f}" for v in runs)
        cells.append(ppl + (f" (λ {', '.join(lambdas)})" if lambdas else "") + f" ({minutes} min)")
    print(f"| {key} | " + " | ".join(cells) + " |")
PY
