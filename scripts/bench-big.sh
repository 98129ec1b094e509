#!/usr/bin/env bash
# Pruning a model with more than 4 GiB of fp16 weights (fixtures/gen/big.py: LLaMA-style, hidden 4096, MLP 11008,
# 12 blocks): generates it into a scratch folder under target/tmp (9.7 GB with the output; /tmp may be small),
# prunes it by magnitude to 50% (uniform, no calibration, no ONNX Runtime), and prints a Markdown table of the
# model size, wall times, the stages of the report's timings_s, the peak RSS (the report's peak_rss_mib, the
# kernel's VmHWM), the anonymous and file-backed resident memory sampled every 0.5 s, and the output size.
# Run after `make setup build`; docs/big-models.md holds a result.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/peak-rss.sh
bin=target/release/neuroal-onnx
python=.cache/venv/bin/python
[ -x "$bin" ] || { echo "error: $bin missing: run \`make build\`" >&2; exit 1; }
[ -x "$python" ] || { echo "error: $python missing: run \`make setup\`" >&2; exit 1; }
mkdir -p target/tmp
out="$(mktemp -d target/tmp/bench-big.XXXXXX)"
trap 'rm -rf "$out"' EXIT

t0=$(date +%s.%N)
"$python" fixtures/generate.py "$out" --only big 2>"$out/generate.log" || { cat "$out/generate.log" >&2; exit 1; }
t1=$(date +%s.%N)
"$bin" "$out/big/model.onnx" "$out/pruned.onnx" --prune-method magnitude --top-up uniform --sparsity 0.5 --quiet \
  >/dev/null &
pid=$!
peak_rss "$pid"
wait "$pid"
t2=$(date +%s.%N)

"$python" - "$out" "$t0" "$t1" "$t2" "$anon" "$file" <<'PY'
import json, os, sys
out, t0, t1, t2, anon, file = sys.argv[1], *map(float, sys.argv[2:])
r = json.load(open(os.path.join(out, "pruned.report.json")))
weights = os.path.getsize(os.path.join(out, "big", "model.onnx_data"))
data = os.path.getsize(os.path.join(out, "pruned.onnx.data"))
mib = weights / 2**20
peak = r["peak_rss_mib"]
print("| | value |\n|---|---|")
print(f"| model: prunable weights | {r['input']['prunable_params'] / 1e9:.2f} G in {r['input']['prunable_linears']} matrices |")
print(f"| model: `model.onnx_data` | {weights:,} bytes ({weights / 2**30:.2f} GiB) |")
print(f"| generating it (`fixtures/generate.py --only big`) | {t1 - t0:.1f} s |")
print(f"| **pruning: wall** | **{t2 - t1:.1f} s** |")
for stage, seconds in r["timings_s"].items():
    print(f"| pruning: `timings_s.{stage}` | {seconds:.1f} s |")
print(f"| **pruning: peak RSS (`peak_rss_mib`)** | **{peak:,.0f} MiB ({100 * peak / mib:.0f}% of the weights)** |")
print(f"| pruning: peak anonymous memory (RssAnon, sampled) | {anon:,.0f} MiB ({100 * anon / mib:.0f}%) |")
print(f"| pruning: peak file-backed memory (RssFile, sampled) | {file:,.0f} MiB ({100 * file / mib:.0f}%) |")
print(f"| output: `pruned.onnx.data` | {data:,} bytes ({data / 2**30:.2f} GiB) |")
print(f"| output: measured sparsity | {r['sparsity']['measured']:.4f} |")
PY
