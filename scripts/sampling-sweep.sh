#!/usr/bin/env bash
# How the model's own calibration text should be sampled: SmolLM2-135M, Wanda at 70% with uniform
# allocation (no search, so each run takes minutes), calibrated on 32 self-written windows of 256
# tokens at several temperatures and nuclei, against 32 x 512 windows of Austen text and of the Brown
# Corpus. Perplexity on held-out Persuasion (first 32 windows of 512 tokens). Prints a Markdown table;
# finished runs are kept in OUT_DIR and skipped. About 30 minutes on 2 cores.
#   scripts/sampling-sweep.sh [OUT_DIR]   (default out/sampling-sweep)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/sampling-sweep}"
mkdir -p "$out"
fx=.cache/fixtures
[ -e $fx/brown/brown.txt ] || .cache/venv/bin/python fixtures/generate.py $fx --only brown
books=$fx/austen
eval=(--eval-text $books/persuasion.txt --eval-windows 32 --eval-seqlen 512 --quiet)
run() {
  local name=$1; shift
  [ -e "$out/$name.report.json" ] && return
  target/release/neuroal-onnx $fx/smollm2/model.onnx "$out/$name.onnx" --sparsity 0.7 --top-up uniform \
    "$@" "${eval[@]}" >/dev/null
  rm -f "$out/$name.onnx" "$out/$name.onnx.data"
}
run austen --calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt \
  --calib $books/sense_and_sensibility.txt --nsamples 32 --seqlen 512
run brown --calib $fx/brown/brown.txt --nsamples 32 --seqlen 512
for setting in "1 1" "1 0.95" "1 0.9" "1 0.8" "0.8 1"; do
  read -r temperature top_p <<<"$setting"
  run "generated-t$temperature-p$top_p" --nsamples 32 --seqlen 256 \
    --calib-temperature "$temperature" --calib-top-p "$top_p"
done
python3 - "$out" <<'PY'
import glob, json, os, sys
print("| calibration | windows × tokens | perplexity | generating (s) |\n|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.report.json"))):
    r = json.load(open(path))
    c, e = r["calibration"], r["evaluation"][0]
    s = c.get("sampling")
    label = (f"self-written, temperature {s['temperature']}, top-p {s['top_p']}" if s else
             os.path.basename(path).split(".")[0] + " text")
    t = r["timings_s"].get("generate_calibration")
    print(f"| {label} | {c['windows']} × {c['seqlen']} | {e['pruned']['perplexity']:.1f} | {t and f'{t:.0f}' or '–'} |")
print(f"\ndense perplexity {e['dense']['perplexity']:.2f}")
PY
