#!/usr/bin/env bash
# One Wanda pass on SmolLM2-135M on the CPU (32 calibration windows of 512 tokens, 50%, uniform):
# wall time per stage and peak RSS, read from the run's report. Run after `make setup build`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
books=.cache/fixtures/austen
start=$(date +%s.%N)
target/release/neuroal-onnx .cache/fixtures/smollm2/model.onnx "$out/wanda.onnx" --sparsity 0.5 \
  --prune-method wanda --top-up uniform --calib $books/emma.txt --calib $books/mansfield_park.txt \
  --calib $books/northanger_abbey.txt --calib $books/sense_and_sensibility.txt \
  --nsamples 32 --seqlen 512 --device cpu --quiet >/dev/null
end=$(date +%s.%N)
python3 - "$out/wanda.report.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timings_s"]
wall = float(sys.argv[3]) - float(sys.argv[2])
rest = wall - t["prune"] - t["write"] - t["measure_files"]
outside = t["prune_statistics"] + t["prune_masks"] + t["prune_write"] + t["write"] + rest
print(f"| stage | seconds |\n|---|---|")
for key, label in [("prune_forward", "ONNX Runtime forward (stage models, dense and pruned runs)"),
                   ("prune_statistics", "activation statistics"), ("prune_masks", "scores and masks"),
                   ("prune_write", "writing each pruned matrix, zstd of it dense and pruned"),
                   ("write", "writing the rest of the model"),
                   ("measure_files", "report: SHA-256 of every file (not counted below)")]:
    print(f"| {label} | {t[key]:.2f} |")
print(f"| everything else (load, tokenize, calibration windows) | {rest:.2f} |")
print(f"| **wall** | **{wall:.2f}** |")
print(f"\nwork outside ONNX Runtime, reporting aside: {outside:.2f} s = {100 * outside / (wall - t['measure_files']):.1f}% of the pass; peak RSS {r['peak_rss_mib']:.0f} MiB")
PY
