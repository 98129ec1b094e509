#!/usr/bin/env bash
# Does NeuroAL's alignment score rank allocations the way perplexity does? On SmolLM2-135M with
# calibration from four Austen novels (8 windows of 512 tokens, the search's own), this runs the
# search once, then prunes at every block λ of its grid (row step off) and at every row λ on the
# chosen block λ, each with --neuroal-*-lambda, and measures perplexity on held-out Persuasion.
# Prints one Markdown table per step: λ, the search's misalignment score, perplexity; and the
# Spearman rank correlation of the two. Run after `make setup build`.
#   scripts/sweep-lambda.sh METHOD SPARSITY [EVAL_WINDOWS]   (default 16 windows; ~30 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
method="${1:?usage: scripts/sweep-lambda.sh METHOD SPARSITY [EVAL_WINDOWS]}"
sparsity="${2:?usage: scripts/sweep-lambda.sh METHOD SPARSITY [EVAL_WINDOWS]}"
windows="${3:-16}"
bin=target/release/neuroal-onnx
[ -x "$bin" ] || { echo "error: $bin missing: run \`make build\`" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
books=.cache/fixtures/austen
common=(--sparsity "$sparsity" --prune-method "$method" --top-up neuroal
  --calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt
  --calib $books/sense_and_sensibility.txt --nsamples 8 --seqlen 512 --seed 0
  --eval-text $books/persuasion.txt --eval-windows "$windows" --device cpu --quiet)
run() { # NAME FLAGS...
  local name=$1
  shift
  "$bin" .cache/fixtures/smollm2/model.onnx "$out/$name.onnx" "${common[@]}" "$@" >/dev/null
  rm -f "$out/$name.onnx" "$out/$name.onnx.data" "$out/$name.report.html"
}

run searched --neuroal-step both
read -r block_grid row_grid block_best < <(python3 - "$out/searched.report.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["search"]
print(",".join(str(c["lambda"]) for c in s["block"]), ",".join(str(c["lambda"]) for c in s["row"]), s["block_lambda"])
PY
)
run uniform-block --neuroal-step block --neuroal-block-lambda 0
for lambda in ${block_grid//,/ }; do
  run "block-$lambda" --neuroal-step block --neuroal-block-lambda "$lambda"
done
for lambda in ${row_grid//,/ }; do
  run "row-$lambda" --neuroal-block-lambda "$block_best" --neuroal-row-lambda "$lambda"
done

python3 - "$out" "$method" "$sparsity" <<'PY'
import json, os, sys
out, method, sparsity = sys.argv[1:]
load = lambda name: json.load(open(os.path.join(out, name + ".report.json")))
searched = load("searched")
s = searched["search"]
ppl = lambda r: r["evaluation"][0]["pruned"]["perplexity"]
def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = rank
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)
e = searched["evaluation"][0]
print(f"{method} at {sparsity}: dense perplexity {e['dense']['perplexity']:.2f}, {e['pruned']['windows']} windows of "
      f"{e['pruned']['seqlen']} tokens of {os.path.basename(e['text'])}; block λ 0 (uniform): "
      f"{ppl(load('uniform-block')):.2f}; the search chose block λ {s['block_lambda']}, row λ {s['row_lambda']}: "
      f"{ppl(searched):.2f}\n")
for step, prefix in [("block", "block-"), ("row", "row-")]:
    scores = [c["score"] for c in s[step]]
    ppls = [ppl(load(prefix + str(c["lambda"]))) for c in s[step]]
    best = min(range(len(ppls)), key=lambda i: ppls[i])
    chosen = s[step + "_lambda"]
    print(f"| {step} λ | misalignment | perplexity |\n|---|---|---|")
    for c, p in zip(s[step], ppls):
        mark = " (chosen)" if c["lambda"] == chosen else ""
        mark += " (lowest perplexity)" if c is s[step][best] else ""
        print(f"| {c['lambda']}{mark} | {c['score']:.4e} | {p:.2f} |")
    print(f"\nSpearman ρ(misalignment, perplexity) over the {step} grid: {spearman(scores, ppls):+.2f}\n")
PY
