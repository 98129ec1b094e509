#!/usr/bin/env bash
# The table on --top-up evo in docs/results.md: SmolLM2-135M at 70%, calibrated on Austen text (Emma, Mansfield
# Park, Northanger Abbey, Sense and Sensibility; 32 windows of 512 tokens), perplexity on held-out
# Persuasion (its first 32 windows of 512 tokens): Wanda with NeuroAL (both steps) and with the
# evolutionary search alone (the default, 40 generations; and 20), and with 20 generations followed
# by NeuroAL's row step (--neuroal-step both), seeds 0, 1 and 2, and 20 generations with
# --reconstruct (seed 0). Prints
# a Markdown table with each job's time without evaluation. Run it on an otherwise idle machine
# for the times to compare. About 3 hours on 2 cores; finished runs are kept in OUT_DIR and
# skipped.
#   scripts/evo-quality.sh [OUT_DIR]   (default out/evo-quality)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/evo-quality}"
mkdir -p "$out"
source scripts/austen-protocol.sh
run() { smollm2_run "$out" "$1" "${austen[@]}" "${@:2}"; }
for seed in 0 1 2; do
  run "wanda-evo-seed$seed" --seed $seed --top-up evo
  run "wanda-evo-g20-seed$seed" --seed $seed --top-up evo --evo-generations 20
  run "wanda-evo-g20-both-seed$seed" --seed $seed --top-up evo --evo-generations 20 --neuroal-step both
  run "wanda-neuroal-seed$seed" --seed $seed
done
run "wanda-evo-g20-reconstruct-seed0" --seed 0 --top-up evo --evo-generations 20 --reconstruct
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
groups = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    name = os.path.basename(path)[: -len(".report.json")].rsplit("-seed", 1)[0]
    wall = sum(v for k, v in r["timings_s"].items() if k in ("load", "prune", "write", "measure_files")) / 60
    a = r.get("allocation") or {}
    kl = ""
    if a.get("top_up") == "evo":
        kl = f"{a['start_fitness']:.3f} → {a['generations'][-1]['fitness']:.3f}" if a["generations"] else ""
    groups.setdefault(name, []).append((r["evaluation"][0]["pruned"]["perplexity"], r["method"]["seed"], wall, kl))
    dense = r["evaluation"][0]["dense"]["perplexity"]
print(f"dense perplexity {dense:.2f}\n")
print("| configuration | perplexity per seed | mean | search fitness, KL start → chosen | job without evaluation (min) |")
print("|---|---|---|---|---|")
for name, runs in sorted(groups.items()):
    ppl = [p for p, *_ in runs]
    print(f"| {name} | {', '.join(f'{p:.1f} (seed {s})' for p, s, *_ in runs)} | {statistics.mean(ppl):.1f} | "
          f"{', '.join(k for *_, k in runs if k) or '–'} | {', '.join(f'{t:.1f}' for _, _, t, _ in runs)} |")
PY
