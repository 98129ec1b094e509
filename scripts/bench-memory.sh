#!/usr/bin/env bash
# Peak memory of whole jobs on SmolLM2-135M (540 MB of fp32 weights): Wanda at 70% with uniform
# allocation, and Wanda + NeuroAL, each calibrated on 32 x 512 windows of Austen text and evaluated
# on the first 32 windows of 512 tokens of Persuasion, with one ONNX Runtime thread. Then Wanda with
# uniform allocation on 128 x 512 calibration windows, without evaluation, with the default memory
# budget and with `--memory-budget 256M` (a quarter of it, 64 MiB, for the windows' hidden states:
# the rest go to disk). Prints each job's peak RSS (the report's `peak_rss_mib`, and
# `stage_peak_rss_mib` of pruning and evaluation), the hidden states it spilled and its stage times
# as a Markdown table. About 30 minutes on 2 cores; run after `make setup build`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
source scripts/austen-protocol.sh
for allocation in uniform neuroal; do
  smollm2_run "$out" "$allocation" --top-up "$allocation" "${austen[@]}" --threads 1
done
many=(--top-up uniform --calib $books/emma.txt --calib $books/mansfield_park.txt --nsamples 128 --seqlen 512)
for budget in default 256M; do
  flags=("${many[@]}")
  [ "$budget" = default ] || flags+=(--memory-budget "$budget")
  target/release/neuroal-onnx .cache/fixtures/smollm2/model.onnx "$out/many-$budget.onnx" --sparsity 0.7 \
    "${flags[@]}" --quiet >/dev/null
done
python3 - "$out" <<'PY'
import json, os, sys
print("| job | peak RSS (MiB) | in prune | in evaluate | hidden states on disk (MiB) | prune (s) | evaluate (s) |")
print("|---|---|---|---|---|---|---|")
jobs = [("uniform", "Wanda + uniform, 32 x 512, evaluated"), ("neuroal", "Wanda + NeuroAL, 32 x 512, evaluated"),
        ("many-default", "Wanda + uniform, 128 x 512, default budget"),
        ("many-256M", "Wanda + uniform, 128 x 512, --memory-budget 256M")]
for name, label in jobs:
    r = json.load(open(os.path.join(sys.argv[1], f"{name}.report.json")))
    t = r["timings_s"]
    spilled = r["calibration"]["spilled_mib"]
    stage = {k: f"{v:.0f}" for k, v in r["stage_peak_rss_mib"].items()}
    print(f"| {label} | {r['peak_rss_mib']:.0f} | {stage.get('prune', '–')} | {stage.get('evaluate', '–')} "
          f"| {spilled:.0f} | {t['prune']:.0f} | {t.get('evaluate', 0):.0f} |")
PY
