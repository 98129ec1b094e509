#!/usr/bin/env bash
# The table on --reconstruct in docs/results.md: SmolLM2-135M at 70%, calibrated on Austen text (Emma,
# Mansfield Park, Northanger Abbey, Sense and Sensibility; 32 windows of 512 tokens), perplexity on
# held-out Persuasion (its first 32 windows of 512 tokens): Wanda, SparseGPT, magnitude and RIA with
# uniform allocation or NeuroAL, with and without re-fitting the kept weights. Wanda + NeuroAL runs
# seeds 0, 1 and 2; the rest seed 0. Prints a Markdown table. About two hours on 2 cores; finished
# runs are kept in OUT_DIR and skipped.
#   scripts/reconstruct-quality.sh [OUT_DIR]   (default out/reconstruct-quality)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/reconstruct-quality}"
mkdir -p "$out"
source scripts/austen-protocol.sh
run() { smollm2_run "$out" "$1" "${austen[@]}" "${@:2}"; }
# The most informative first, so that a partial run already answers the main question.
run "wanda-neuroal-reconstruct-seed0" --seed 0 --reconstruct
run "wanda-uniform-reconstruct-seed0" --seed 0 --top-up uniform --reconstruct
run "wanda-uniform-seed0" --seed 0 --top-up uniform
run "sparsegpt-neuroal-seed0" --seed 0 --prune-method sparsegpt
for seed in 1 2; do run "wanda-neuroal-reconstruct-seed$seed" --seed $seed --reconstruct; done
run "magnitude-uniform-reconstruct-seed0" --seed 0 --prune-method magnitude --top-up uniform --reconstruct
run "ria-neuroal-seed0" --seed 0 --prune-method ria
run "ria-neuroal-reconstruct-seed0" --seed 0 --prune-method ria --reconstruct
# Wanda + NeuroAL without re-fitting, seeds 0-2: the same runs as scripts/default-quality.sh's Austen rows.
for seed in 0 1 2; do run "wanda-neuroal-seed$seed" --seed $seed; done
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
groups = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    name = os.path.basename(path)[: -len(".report.json")].rsplit("-seed", 1)[0]
    s = r.get("search") or {}
    wall = sum(v for k, v in r["timings_s"].items()
               if k in ("load", "generate_calibration", "prune", "write", "measure_files")) / 60
    groups.setdefault(name, []).append((r["evaluation"][0]["pruned"]["perplexity"], r["method"]["seed"],
        s.get("block_lambda"), s.get("row_lambda"), wall))
    dense = r["evaluation"][0]["dense"]["perplexity"]
print(f"dense perplexity {dense:.2f}\n")
print("| configuration | perplexity per seed | mean | λ block / row | job without evaluation (min) |")
print("|---|---|---|---|---|")
for name, runs in sorted(groups.items()):
    ppl = [p for p, *_ in runs]
    lambdas = ", ".join(f"{b} / {w}" for _, _, b, w, _ in runs if b is not None) or "–"
    print(f"| {name} | {', '.join(f'{p:.1f} (seed {s})' for p, s, *_ in runs)} | {statistics.mean(ppl):.1f} | "
          f"{lambdas} | {', '.join(f'{t:.1f}' for *_, t in runs)} |")
PY
