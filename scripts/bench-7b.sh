#!/usr/bin/env bash
# A whole job on a model of LLaMA-2-7B's shape (fixtures/gen/llama7b.py: 32 blocks, hidden 4096, MLP 11008,
# vocabulary 32,000, 13.5 GB of random fp16 weights; generated into .cache/fixtures/llama7b when missing):
# Wanda at 70%, calibrated on 4 windows of 128 random token ids, evaluated on 2 windows of 128 tokens of
# Persuasion, one stage at a time. FLAGS replace the allocation (default `--top-up uniform`). Prints a
# Markdown table of the wall time, the report's stage times, the peak RSS (the report's peak_rss_mib, the
# kernel's VmHWM) against the weights, each stage's peak (stage_peak_rss_mib), and the anonymous and
# file-backed resident memory sampled every 0.5 s. Then checks the output (scripts/verify-pruned.py):
# every matrix read back one at a time against the input (kept weights unchanged, each row's zeros;
# exactly the target's count per row with the default allocation), and the whole output opened in ONNX
# Runtime from another folder and run on one window. Needs about 28 GB of free disk (the output goes
# under target/tmp). Run after `make setup build`.
# FIXTURE names another streamed fixture to run the same job on, e.g. big-fp32 (fixtures/gen/big_fp32.py:
# 12 blocks of the same sizes with float32 weights, 9.7 GB; about 20 GB of disk for it and its output).
#   [FIXTURE=llama7b] scripts/bench-7b.sh [FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/peak-rss.sh
bin=target/release/neuroal-onnx
python=.cache/venv/bin/python
fx=.cache/fixtures
[ -x "$bin" ] || { echo "error: $bin missing: run \`make build\`" >&2; exit 1; }
[ -x "$python" ] || { echo "error: $python missing: run \`make setup\`" >&2; exit 1; }
fixture=${FIXTURE:-llama7b}
"$python" fixtures/generate.py $fx --only "$fixture" # kept when up to date
model=$fx/$fixture/model.onnx
flags=("$@")
exact_rows=()
[ ${#flags[@]} -gt 0 ] || { flags=(--top-up uniform); exact_rows=(--exact-rows); }
mkdir -p target/tmp
out="$(mktemp -d target/tmp/bench-7b.XXXXXX)"
trap 'rm -rf "$out"' EXIT
"$python" -c "import json, random; random.seed(0); json.dump([random.randrange(json.load(open('$fx/$fixture/fixture.json'))['vocab']) for _ in range(1024)], open('$out/ids.json', 'w'))"

t0=$(date +%s.%N)
"$bin" "$model" "$out/pruned.onnx" --sparsity 0.7 --prune-method wanda "${flags[@]}" \
  --calib "$out/ids.json" --nsamples 4 --seqlen 128 \
  --eval-text $fx/austen/persuasion.txt --eval-windows 2 --eval-seqlen 128 --quiet >/dev/null &
pid=$!
peak_rss "$pid"
wait "$pid"
t1=$(date +%s.%N)

"$python" - "$out" "$fx/$fixture/model.onnx_data" "$t0" "$t1" "$anon" "$file" "${flags[*]}" <<'PY'
import json, os, sys
out, weights_file, t0, t1, anon, file, flags = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:7]), sys.argv[7]
r = json.load(open(os.path.join(out, "pruned.report.json")))
weights = os.path.getsize(weights_file)
mib = weights / 2**20
peak = r["peak_rss_mib"]
e = r["evaluation"][0]
print(f"Wanda at 70%, `{flags}`\n")
print("| | value |\n|---|---|")
print(f"| model: prunable weights | {r['input']['prunable_params'] / 1e9:.2f} G in {r['input']['prunable_linears']} matrices |")
print(f"| model: `model.onnx_data` | {weights:,} bytes ({weights / 2**30:.2f} GiB) |")
print(f"| **wall** | **{t1 - t0:.0f} s** |")
for stage, seconds in r["timings_s"].items():
    print(f"| `timings_s.{stage}` | {seconds:.1f} s |")
print(f"| **peak RSS (`peak_rss_mib`)** | **{peak:,.0f} MiB ({100 * peak / mib:.0f}% of the weights)** |")
for stage, stage_peak in r["stage_peak_rss_mib"].items():
    print(f"| peak RSS in `{stage}` (`stage_peak_rss_mib`) | {stage_peak:,.0f} MiB ({100 * stage_peak / mib:.0f}%) |")
print(f"| peak anonymous memory (RssAnon, sampled) | {anon:,.0f} MiB ({100 * anon / mib:.0f}%) |")
print(f"| peak file-backed memory (RssFile, sampled) | {file:,.0f} MiB ({100 * file / mib:.0f}%) |")
print(f"| measured sparsity | {r['sparsity']['measured']:.4f} |")
search = r.get("search")
if search:
    print(f"| NeuroAL: λ block / row, candidates, search jobs | {search['block_lambda']} / {search['row_lambda']}, "
          f"{len(search['block'])} + {len(search['row'])}, {search['jobs']} |")
print(f"| perplexity dense / pruned (random weights) | {e['dense']['perplexity']:.4g} / {e['pruned']['perplexity']:.4g} |")
PY

echo
echo "Output check (scripts/verify-pruned.py):"
"$python" scripts/verify-pruned.py "$model" "$out/pruned.onnx" "$out/pruned.report.json" \
  "${exact_rows[@]}" --run --allow-nonfinite
