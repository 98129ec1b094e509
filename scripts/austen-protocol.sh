# Sourced by the quality scripts (from the repository root): the Austen protocol of the tables in
# docs/results.md and the README, and a runner.
#   austen: calibration on Emma, Mansfield Park, Northanger Abbey and Sense and Sensibility, 32 x 512;
#   eval:   perplexity on held-out Persuasion, its first 32 windows of 512 tokens.
books=.cache/fixtures/austen
austen=(--calib $books/emma.txt --calib $books/mansfield_park.txt --calib $books/northanger_abbey.txt
        --calib $books/sense_and_sensibility.txt --nsamples 32 --seqlen 512)
eval=(--eval-text $books/persuasion.txt --eval-windows 32 --eval-seqlen 512 --quiet)

# smollm2_run OUT_DIR NAME FLAGS...: prunes SmolLM2-135M to 70% with FLAGS and evaluates it, keeping
# only OUT_DIR/NAME.report.json (and .html); skipped when that report exists.
smollm2_run() {
  local out=$1 name=$2; shift 2
  [ -e "$out/$name.report.json" ] && return
  target/release/neuroal-onnx .cache/fixtures/smollm2/model.onnx "$out/$name.onnx" --sparsity 0.7 \
    "$@" "${eval[@]}" >/dev/null
  rm -f "$out/$name.onnx" "$out/$name.onnx.data"
}
