#!/usr/bin/env bash
# Peak memory of whole jobs on SmolLM2-135M (540 MB of fp32 weights): Wanda at 70% with uniform
# allocation, and Wanda + NeuroAL, each calibrated on 32 x 512 windows of Austen text and evaluated
# on the first 32 windows of 512 tokens of Persuasion, with one ONNX Runtime thread. Prints each
# job's peak RSS (the report's `peak_rss_mib`) and its stage times as a Markdown table. About 20
# minutes on 2 cores; run after `make setup build`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
source scripts/austen-protocol.sh
for allocation in uniform neuroal; do
  smollm2_run "$out" "$allocation" --top-up "$allocation" "${austen[@]}" --threads 1
done
python3 - "$out" <<'PY'
import json, os, sys
print("| job | peak RSS (MiB) | prune (s) | evaluate (s) |\n|---|---|---|---|")
for allocation in ["uniform", "neuroal"]:
    r = json.load(open(os.path.join(sys.argv[1], f"{allocation}.report.json")))
    t = r["timings_s"]
    print(f"| Wanda + {allocation} | {r['peak_rss_mib']:.0f} | {t['prune']:.0f} | {t['evaluate']:.0f} |")
PY
