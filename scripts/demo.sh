#!/usr/bin/env bash
# `make demo`: the paper's claim on the real model. SmolLM2-135M pruned to 70% with Wanda twice,
# calibrated on the same Austen windows: once with the same sparsity in every matrix (uniform), once
# with NeuroAL's searched allocation. Held-out Persuasion perplexity, dense and both pruned, side by
# side. About 5 minutes on 2 cores after `make demo-setup` (7 min 17 s measured while another job
# shared the cores).
#   scripts/demo.sh [OUT_DIR]   (default out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/demo}"
mkdir -p "$out"
fx=.cache/fixtures
books=$fx/austen
bin=target/release/neuroal-onnx
common=(--sparsity 0.7 --prune-method wanda
        --calib $books/emma.txt --calib $books/mansfield_park.txt --nsamples 16 --seqlen 256
        --eval-text $books/persuasion.txt --eval-windows 16 --eval-seqlen 512)

$bin inspect $fx/smollm2/model.onnx | sed -n 1,3p  # sed reads it all: no SIGPIPE under pipefail
for top_up in uniform neuroal; do
  echo
  echo "== Wanda + $top_up"
  $bin $fx/smollm2/model.onnx "$out/smollm2-wanda-$top_up-0.7.onnx" --top-up "$top_up" "${common[@]}"
done

.cache/venv/bin/python - "$out" <<'PY'
import json, sys
def report(top_up):
    return json.load(open(f"{sys.argv[1]}/smollm2-wanda-{top_up}-0.7.report.json"))
uniform, neuroal = report("uniform"), report("neuroal")
ppl = lambda r, which: r["evaluation"][0][which]["perplexity"]
search = neuroal["search"]
print()
print("SmolLM2-135M, 70% of the block weights pruned with Wanda; perplexity on held-out Persuasion")
print(f"  (first 16 windows of 512 tokens; calibration: 16 windows of 256 tokens from Emma and Mansfield Park)")
print(f"  dense                            {ppl(uniform, 'dense'):10.2f}")
print(f"  Wanda, uniform allocation        {ppl(uniform, 'pruned'):10.2f}")
print(f"  Wanda + NeuroAL                  {ppl(neuroal, 'pruned'):10.2f}"
      f"   (block λ {search['block_lambda']}, row λ {search['row_lambda']})")
print(f"  NeuroAL's perplexity is {ppl(uniform, 'pruned') / ppl(neuroal, 'pruned'):.1f}x lower than uniform's")
PY
