#!/usr/bin/env bash
# NeuroAL's search against the final pruning pass on SmolLM2-135M on the CPU, in one run: Wanda at
# 70%, both steps, calibration N windows of 512 tokens from four Austen novels (the search uses the
# first 8, as the reference does), no evaluation. Prints the search's and the final pass's wall
# time and their ratio, read from the run's report. Run after `make setup build`.
#   scripts/bench-search.sh [NSAMPLES [SEARCH_JOBS]]   (default 128, the reference's, and the default
#   jobs; about 5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
nsamples="${1:-128}"
jobs="${2:-0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
books=.cache/fixtures/austen
target/release/neuroal-onnx .cache/fixtures/smollm2/model.onnx "$out/neuroal.onnx" --sparsity 0.7 \
  --prune-method wanda --top-up neuroal --neuroal-step both --calib $books/emma.txt \
  --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt \
  --calib $books/sense_and_sensibility.txt --nsamples "$nsamples" --seqlen 512 --tasks none --search-jobs "$jobs" \
  --device cpu --quiet >/dev/null
python3 - "$out/neuroal.report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, s = r["timings_s"], r["search"]
final = t["prune"] - t["search"]
n = len(s["block"]) + len(s["row"])
print("| part | windows | passes | seconds |\n|---|---|---|---|")
print(f"| search: block step | {s['windows']} | {len(s['block'])} | – |")
print(f"| search: row step | {s['windows']} | {len(s['row'])} | – |")
print(f"| search, both steps | {s['windows']} | {n} | {t['search']:.1f} |")
print(f"| final pass | {r['calibration']['windows']} | 1 | {final:.1f} |")
print("\n| seconds in | search (all candidates) | final pass |\n|---|---|---|")
for key, label in [("forward", "ONNX Runtime"), ("statistics", "statistics"), ("masks", "weights, scores, masks")]:
    print(f"| {label} | {s['timings_s'][key]:.1f} | {t['prune_' + key]:.1f} |")
print(f"| writing and zstd | – | {t['prune_write']:.1f} |")
print(f"\nsearch / final pass = {t['search'] / final:.2f} with {s['jobs']} search job(s); peak RSS {r['peak_rss_mib']:.0f} MiB")
PY
