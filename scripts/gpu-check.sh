#!/usr/bin/env bash
# Checks the CUDA mask kernels on a machine with an NVIDIA GPU and no network (written for one
# H200; under 8 minutes). Prints Markdown tables and, when $OUT is set, writes them there
# (gpu-masks.md, gpu-prune.md, gpu-check.log).
#
#   1. builds the release binary (cargo, if the machine has it), else uses the staged one;
#   2. `neuroal-onnx kernels --check`: LLaMA-7B's shapes (4096×4096, 11008×4096, 4096×11008)
#      and SmolLM2-135M's (576×576, 1536×576, 576×1536), fresh random data, magnitude and Wanda,
#      row and neuron granularity, 2:4, continuous and 4-bit weights: the CUDA masks and pruned
#      weights must equal the CPU path's bit for bit; kernel time (CUDA events, median of 25
#      after warm-up) against the device-to-device copy bandwidth measured in the same run;
#   3. prunes a model with the CUDA masks (--device auto: ONNX Runtime stays on the CPU library
#      carried along, the masks go to the GPU) and with --device cpu, for magnitude, Wanda, Wanda
#      2:4 and Wanda with NeuroAL's row step (per-row budgets): the output model bytes and the
#      perplexities must be identical.
#
# Staging, on a machine with the project set up (`make setup`; the GPU machine has no network):
#   scripts/gpu-check.sh --stage     # fills .cache/gpu (git-ignored, about 50 MB): stripped
#                                    # binary, libonnxruntime, tiny fixtures, two Austen texts
# then run `scripts/gpu-check.sh` there with `.cache/gpu` carried. SmolLM2-135M (540 MB) does not
# fit the 64 MiB a device call carries, so step 3 prunes the tiny llama fixture unless
# MODEL=path/to/model.onnx names another (e.g. .cache/fixtures/smollm2/model.onnx, used when
# present). NVRTC is taken from the machine's CUDA toolkit or pip wheel first (its version matches
# the driver), then from .cache/nvrtc/lib.
#
# Environment: OUT (results folder), MODEL, BIN (a binary to use), REQUIRE_CUDA=0 (let step 3
# fall back to CPU masks and skip step 2: a dry run of the plumbing on a machine with no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=.cache/gpu
DEADLINE=$((SECONDS + 450)) # 7.5 minutes for everything
REQUIRE_CUDA="${REQUIRE_CUDA:-1}"

if [ "${1:-}" = "--stage" ]; then
  cargo build --release
  rm -rf "$STAGE"
  mkdir -p "$STAGE/bin" "$STAGE/ort/lib" "$STAGE/fixtures/tiny" "$STAGE/fixtures/austen"
  strip -o "$STAGE/bin/neuroal-onnx" target/release/neuroal-onnx
  cp -P .cache/ort/lib/libonnxruntime* "$STAGE/ort/lib/"
  cp -r .cache/fixtures/tiny/llama "$STAGE/fixtures/tiny/"
  cp .cache/fixtures/austen/persuasion.txt .cache/fixtures/austen/emma.txt "$STAGE/fixtures/austen/"
  du -sh "$STAGE"
  exit 0
fi

out="${OUT:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log="$work/gpu-check.log"
left() { # seconds left before the deadline, less $1, at least 5
  local l=$((DEADLINE - SECONDS - ${1:-0}))
  echo $((l < 5 ? 5 : l))
}
say() { echo "$*" | tee -a "$log" >&2; }
finish() {
  if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$log" "$out/"
    for f in gpu-masks.md gpu-prune.md; do [ -f "$work/$f" ] && cp "$work/$f" "$out/"; done
  fi
}
trap 'finish; rm -rf "$work"' EXIT

# 1. The binary.
if command -v cargo >/dev/null; then
  say "building (cargo build --release) ..."
  timeout "$(left)" cargo build --release 2>&1 | tail -3 | tee -a "$log" >&2
  bin="${BIN:-target/release/neuroal-onnx}"
else
  bin="${BIN:-$STAGE/bin/neuroal-onnx}"
fi
[ -x "$bin" ] || { say "error: no binary at $bin: stage one with scripts/gpu-check.sh --stage"; exit 1; }

# NVRTC: the toolkit's or the pip wheel's (matching the driver), else the project's.
nvrtc=""
for dir in \
  "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)")")/lib64" \
  /usr/local/cuda/lib64 \
  "$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)" \
  .cache/nvrtc/lib; do
  if [ -n "$dir" ] && compgen -G "$dir/libnvrtc.so.13*" >/dev/null; then nvrtc="$dir"; break; fi
done
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "binary: $bin; NVRTC: ${nvrtc:-not found}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log" >&2

status=0

# 2. Masks and timings on random matrices.
if [ "$REQUIRE_CUDA" = 1 ]; then
  say "kernels --check ..."
  if timeout "$(left 150)" "$bin" kernels --check --out "$work/gpu-masks.md" 2>>"$log"; then
    say "kernels --check: every mask identical"
  else
    say "error: kernels --check failed (exit $?), see gpu-check.log"
    status=1
  fi
fi

# 3. End to end: CUDA masks against CPU masks on a real model.
ort="${ORT_DYLIB_PATH:-}"
for lib in .cache/ort/lib/libonnxruntime.so "$STAGE/ort/lib/libonnxruntime.so"; do
  [ -z "$ort" ] && [ -e "$lib" ] && ort="$lib"
done
model="${MODEL:-}"
for m in .cache/fixtures/smollm2/model.onnx .cache/fixtures/tiny/llama/model.onnx "$STAGE/fixtures/tiny/llama/model.onnx"; do
  [ -z "$model" ] && [ -e "$m" ] && model="$m"
done
texts=""
for t in .cache/fixtures/austen "$STAGE/fixtures/austen"; do
  [ -z "$texts" ] && [ -e "$t/persuasion.txt" ] && texts="$t"
done
if [ -z "$ort" ] || [ -z "$model" ] || [ -z "$texts" ]; then
  say "error: pruning comparison skipped: need libonnxruntime ($ort), a model ($model) and Austen texts ($texts); stage them with --stage"
  exit 1
fi
export ORT_DYLIB_PATH="$ort"
common=(--eval-text "$texts/persuasion.txt" --seqlen 128 --eval-windows 4 --json)
calib=(--calib "$texts/emma.txt" --nsamples 8)
{
  echo "# CUDA vs CPU masks, end to end: $model"
  echo
  echo "ONNX Runtime on the CPU ($ort) in both runs; masks on the GPU (--device auto) or the CPU (--device cpu)."
  echo
  echo "| job | output bytes | perplexity, CUDA masks | perplexity, CPU masks | seconds CUDA / CPU |"
  echo "|---|---|---:|---:|---|"
} >"$work/gpu-prune.md"
jobs=0
run_job() { # name, then flags; each device writes <work>/<job>/<device>/model.onnx
  local name="$1" dev secs="" ppl=() t0 dir="$work/job$jobs"
  shift
  jobs=$((jobs + 1))
  for dev in auto cpu; do
    mkdir -p "$dir/$dev"
    t0=$SECONDS
    if ! timeout "$(left)" "$bin" "$model" "$dir/$dev/model.onnx" --device "$dev" "${common[@]}" "$@" \
      >"$dir/$dev/report.json" 2>"$dir/$dev/stderr"; then
      say "error: $name --device $dev failed: $(tail -2 "$dir/$dev/stderr")"
      status=1
      return
    fi
    secs+="$((SECONDS - t0))/"
    ppl+=("$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["evaluation"][0]["pruned"]["value"])' "$dir/$dev/report.json")")
  done
  if grep -q "CUDA mask kernels unavailable" "$dir/auto/stderr"; then
    say "$name: $(grep "CUDA mask kernels unavailable" "$dir/auto/stderr")"
    [ "$REQUIRE_CUDA" = 1 ] && status=1
  fi
  local same=identical file
  for file in model.onnx model.onnx.data; do
    [ -e "$dir/auto/$file" ] || [ -e "$dir/cpu/$file" ] || continue
    cmp -s "$dir/auto/$file" "$dir/cpu/$file" || same="**DIFFERENT** ($file)"
  done
  [ "${ppl[0]}" = "${ppl[1]}" ] || same="$same, **perplexity differs**"
  [ "$same" = identical ] || status=1
  echo "| $name | $same | ${ppl[0]} | ${ppl[1]} | ${secs%/} |" >>"$work/gpu-prune.md"
  say "$name: $same (perplexity ${ppl[0]} / ${ppl[1]})"
}
run_job "magnitude 0.7" --sparsity 0.7 --prune-method magnitude --top-up uniform
run_job "wanda 0.7" --sparsity 0.7 --prune-method wanda --top-up uniform "${calib[@]}"
run_job "wanda 2:4" --sparsity 0.5 --nm 2:4 --prune-method wanda --top-up uniform "${calib[@]}"
run_job "wanda neuroal row 0.7" --sparsity 0.7 --prune-method wanda --top-up neuroal --neuroal-step row "${calib[@]}"

[ -f "$work/gpu-masks.md" ] && cat "$work/gpu-masks.md"
cat "$work/gpu-prune.md"
say "gpu-check: $([ $status = 0 ] && echo passed || echo FAILED) in $SECONDS s"
exit $status
