#!/usr/bin/env bash
# The headline command as a user types it, on SmolLM2-135M on the CPU: `neuroal-onnx IN OUT
# --sparsity 0.7` with no other flag (Wanda + NeuroAL, calibrated on text the model writes itself at
# the default size). Wall time per stage and peak RSS, read from the run's report, as a Markdown
# table. Run after `make setup build`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
target/release/neuroal-onnx .cache/fixtures/smollm2/model.onnx "$out/default.onnx" --sparsity 0.7 \
  --quiet >/dev/null
end=$(date +%s.%N)
python3 - "$out/default.report.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, c, s = r["timings_s"], r["calibration"], r["search"]
wall = float(sys.argv[3]) - float(sys.argv[2])
search = t.get("search", 0.0)
final = t["prune"] - search
rest = wall - t["generate_calibration"] - t["prune"] - t["write"] - t["measure_files"]
print(f"calibration: {c['windows']} self-generated windows of {c['seqlen']} tokens; "
      f"NeuroAL λ block {s['block_lambda']}, row {s['row_lambda']}, {s['jobs']} search jobs\n")
print("| stage | seconds |\n|---|---|")
for label, seconds in [("the model writes its calibration text", t["generate_calibration"]),
                       ("NeuroAL search (29 candidate passes on the first 8 windows)", search),
                       ("final pass: forward, statistics, masks, each pruned matrix written", final),
                       ("writing the rest of the model", t["write"]),
                       ("report: SHA-256 of every file", t["measure_files"]),
                       ("everything else (load, discovery, ONNX Runtime start)", rest)]:
    print(f"| {label} | {seconds:.1f} |")
print(f"| **wall** | **{wall:.1f}** ({wall / 60:.1f} min) |")
print(f"\npeak RSS {r['peak_rss_mib']:.0f} MiB")
PY
