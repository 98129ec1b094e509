#!/usr/bin/env bash
# Checks the GPU path on a machine with an NVIDIA GPU and no network (written for one H200; the
# checks take under 8 minutes). Prints Markdown tables and, when $OUT is set, writes them there
# (gpu-masks.md, gpu-prune.md, gpu-ep.md, gpu-check.log).
#
#   1. the binary: $BIN, else the staged one, else `cargo build --release`;
#   2. `neuroal-onnx kernels --check`: LLaMA-7B's shapes (4096×4096, 11008×4096, 4096×11008)
#      and SmolLM2-135M's (576×576, 1536×576, 576×1536), fresh random data, magnitude and Wanda,
#      row and neuron granularity, 2:4, continuous and 4-bit weights: the CUDA masks and pruned
#      weights must equal the CPU path's bit for bit; kernel time (CUDA events, median of 25
#      after warm-up) against the device-to-device copy bandwidth measured in the same run;
#   3. prunes a model with the CUDA masks (--device auto on the CPU ONNX Runtime: only the masks
#      go to the GPU) and with --device cpu, for magnitude, Wanda, Wanda 2:4 and Wanda with
#      NeuroAL's row step (per-row budgets): the output bytes and perplexities must be identical;
#   4. ONNX Runtime's CUDA execution provider, end to end: Wanda at 70% with --device cuda (the
#      provider for calibration and evaluation, the kernels for the masks) against --device cpu.
#      Not bit for bit (cuBLAS sums in another order): the table gives both perplexities, the
#      fraction of mask bits that differ and both times, and a third run with the activation sums
#      taken on the host (NEUROAL_ONNX_SUMS=host) to show what keeping them on the device saves.
#      The provider is taken from the machine's Python onnxruntime when it offers CUDA, else from
#      the staged `ep` bundle, with the NVIDIA libraries of the machine's Python `nvidia` packages
#      (PyTorch's).
#
# The model is SmolLM2-135M, converted on the GPU machine from the staged GGUF by the fixture
# generator (about 30 s), or the tiny llama fixture when the `smollm2` bundle was not staged;
# MODEL=path/to/model.onnx names another.
#
# Staging, on a machine set up with `make setup` (and `make setup-gpu` for the `ep` bundle):
#   scripts/gpu-check.sh --stage [core] [smollm2] [ep]
# (default: all three, `ep` only when .cache/ort-gpu exists) writes into .cache/gpu/parts
# (git-ignored) each bundle as an xz tarball cut into parts of at most 30 MiB, manifest.sha256,
# and calls.txt: the paths each device call carries, at most 61 MiB a call (a call carries
# 64 MiB in all, the checkout included); five calls for all three bundles.
#   core     the stripped binary, the CPU ONNX Runtime, the tiny fixtures, two Austen texts (12 MiB)
#   smollm2  the SmolLM2 GGUF, the Austen Debian package and the gguf wheel (88 MiB)
#   ep       onnxruntime-gpu's libonnxruntime and CUDA provider (186 MiB)
# On the GPU machine every call runs the same command, `OUT=$OUT scripts/gpu-check.sh`, carrying
# the next line of calls.txt. A warm machine keeps ignored files between calls, so the parts
# gather there; make the calls back to back, since an idle machine goes back after 30 s and
# takes the parts with it. Until every part in the manifest has arrived, the script says which
# are missing and exits 3. The call that brings the last one unpacks the bundles and runs the
# checks (`--receive` unpacks and stops there).
#
# Environment: OUT (results folder), MODEL, BIN (a binary to use), CHECKS (the steps to run, of
# "kernels masks ep"; default all three), REQUIRE_CUDA=0 (a dry run of the plumbing on a machine
# with no GPU: step 2 is skipped and CUDA failing is expected).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU=.cache/gpu
PARTS="$GPU/parts"
PART_MIB=30
CALL_MIB=61
REQUIRE_CUDA="${REQUIRE_CUDA:-1}"
CHECKS=" ${CHECKS:-kernels masks ep} "

# --- Staging -------------------------------------------------------------------------------------

# Copies bundle $1's files into the folder $2.
bundle_files() {
  local name="$1" dir="$2"
  case "$name" in
    core)
      cargo build --release
      mkdir -p "$dir/bin" "$dir/ort/lib" "$dir/fixtures/tiny" "$dir/austen"
      strip -o "$dir/bin/neuroal-onnx" target/release/neuroal-onnx
      cp -P .cache/ort/lib/libonnxruntime* "$dir/ort/lib/"
      cp -r .cache/fixtures/tiny/llama "$dir/fixtures/tiny/"
      cp .cache/fixtures/austen/persuasion.txt .cache/fixtures/austen/emma.txt "$dir/austen/"
      ;;
    smollm2)
      mkdir -p "$dir/downloads" "$dir/wheels"
      cp .cache/downloads/SmolLM2-135M-Instruct.Q4_1.gguf .cache/downloads/r-cran-janeaustenr_*.deb "$dir/downloads/"
      local gguf
      gguf="$(grep '^gguf==' fixtures/requirements.txt)"
      .cache/venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheels" "$gguf"
      ;;
    ep)
      mkdir -p "$dir/ort-gpu/lib"
      cp -P .cache/ort-gpu/lib/libonnxruntime.so* .cache/ort-gpu/lib/libonnxruntime_providers_{cuda,shared}.so \
        "$dir/ort-gpu/lib/"
      ;;
    *)
      echo "error: unknown bundle '$name' (core, smollm2, ep)" >&2
      return 2
      ;;
  esac
}

stage() {
  local bundles=("$@") name size f i limit=$((CALL_MIB << 20))
  local -a call_parts=() call_bytes=()
  if [ ${#bundles[@]} = 0 ]; then
    bundles=(core smollm2)
    [ -e .cache/ort-gpu/lib/libonnxruntime_providers_cuda.so ] && bundles+=(ep)
  fi
  stage_tmp="$(mktemp -d "$GPU.stage-XXXXXX")"
  trap 'rm -rf "$stage_tmp"' EXIT
  mkdir -p "$stage_tmp/parts"
  for name in "${bundles[@]}"; do
    echo "bundle $name ..." >&2
    mkdir -p "$stage_tmp/$name"
    bundle_files "$name" "$stage_tmp/$name"
    tar -C "$stage_tmp/$name" -cf - . | xz -T0 -6 | split -b "${PART_MIB}m" -d -a 2 - "$stage_tmp/parts/$name.tar.xz."
    rm -rf "${stage_tmp:?}/$name"
  done
  (cd "$stage_tmp/parts" && sha256sum -- * >manifest.sha256)
  # The calls: each carries the manifest and whole parts, largest first into the first call
  # with room, so that the parts take as few calls as they can.
  while read -r size f; do
    for i in "${!call_bytes[@]}"; do
      if [ $((call_bytes[i] + size)) -le "$limit" ]; then
        call_parts[i]+=" $PARTS/$f"
        call_bytes[i]=$((call_bytes[i] + size))
        continue 2
      fi
    done
    call_parts+=("$PARTS/$f")
    call_bytes+=("$size")
  done < <(cd "$stage_tmp/parts" && stat -c '%s %n' *.tar.xz.* | sort -rn)
  for i in "${!call_parts[@]}"; do
    echo "${call_parts[i]} $PARTS/manifest.sha256" >>"$stage_tmp/parts/calls.txt"
  done
  rm -rf "$PARTS"
  mkdir -p "$GPU"
  mv "$stage_tmp/parts" "$PARTS"
  du -sh "$PARTS" >&2
  echo "calls (each: OUT=\$OUT scripts/gpu-check.sh, carrying one line):" >&2
  cat "$PARTS/calls.txt" >&2
}

if [ "${1:-}" = "--stage" ]; then
  shift
  stage "$@"
  exit 0
fi

# --- Receiving the parts -------------------------------------------------------------------------

# Unpacks every bundle whose parts have all arrived, once; exits 3 naming the missing parts.
receive() {
  [ -f "$PARTS/manifest.sha256" ] || return 0
  local missing=() name f
  for f in $(cut -d' ' -f3 "$PARTS/manifest.sha256"); do
    [ -f "$PARTS/$f" ] || missing+=("$f")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu-check: waiting for ${#missing[@]} part(s): ${missing[*]}; carry the next line of $PARTS/calls.txt now" >&2
    exit 3
  fi
  for name in $(cut -d' ' -f3 "$PARTS/manifest.sha256" | sed -n 's/\.tar\.xz\.[0-9]*$//p' | uniq); do
    [ -e "$GPU/.$name.unpacked" ] && continue
    (cd "$PARTS" && grep " $name\.tar\.xz\." manifest.sha256 | sha256sum --quiet -c -) ||
      { echo "error: the parts of $name do not match $PARTS/manifest.sha256: stage and carry them again" >&2; exit 1; }
    cat "$PARTS/$name".tar.xz.* | xz -d | tar -C "$GPU" -xf -
    touch "$GPU/.$name.unpacked"
    echo "gpu-check: unpacked $name" >&2
  done
}
receive
[ "${1:-}" = "--receive" ] && exit 0

# --- The checks ----------------------------------------------------------------------------------

DEADLINE=$((SECONDS + 450)) # 7.5 minutes for everything
out="${OUT:-}"
work="$(mktemp -d)"
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
    for f in gpu-masks.md gpu-prune.md gpu-ep.md; do [ -f "$work/$f" ] && cp "$work/$f" "$out/"; done
  fi
  rm -rf "$work"
}
trap finish EXIT
# The first of the arguments that exists, else nothing.
first() {
  local p
  for p in "$@"; do [ -n "$p" ] && [ -e "$p" ] && { echo "$p"; return; }; done
  return 0
}
# A field of a report: report.json, then a Python expression on r.
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }

# 1. The binary and NVRTC (the toolkit's or the pip wheel's, matching the driver, else the project's).
bin="$(first "${BIN:-}" "$GPU/bin/neuroal-onnx")"
if [ -z "$bin" ]; then
  say "building (cargo build --release) ..."
  timeout "$(left)" cargo build --release 2>&1 | tail -3 | tee -a "$log" >&2
  bin=target/release/neuroal-onnx
fi
[ -x "$bin" ] || { say "error: no binary at $bin: stage one with scripts/gpu-check.sh --stage"; exit 1; }
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

# The model: SmolLM2 (the project's fixture, or converted here from the staged GGUF), else tiny.
if [ -z "${MODEL:-}" ] && [ ! -e .cache/fixtures/smollm2/model.onnx ] && [ -e "$GPU/downloads/SmolLM2-135M-Instruct.Q4_1.gguf" ] &&
  [ ! -e "$GPU/fixtures/smollm2/model.onnx" ]; then
  say "converting SmolLM2 from the GGUF (fixtures/generate.py) ..."
  site="$work/site"
  if python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$GPU"/wheels/*.whl >>"$log" 2>&1 &&
    PYTHONPATH="$site" timeout "$(left 300)" python3 fixtures/generate.py "$GPU/fixtures" --only smollm2 >>"$log" 2>&1; then
    say "SmolLM2 converted"
  else
    say "error: converting SmolLM2 failed (see gpu-check.log); the tiny model stands in"
    status=1
  fi
fi
model="$(first "${MODEL:-}" .cache/fixtures/smollm2/model.onnx "$GPU/fixtures/smollm2/model.onnx" \
  .cache/fixtures/tiny/llama/model.onnx "$GPU/fixtures/tiny/llama/model.onnx")"
ort="$(first "${ORT_DYLIB_PATH:-}" .cache/ort/lib/libonnxruntime.so "$GPU/ort/lib/libonnxruntime.so")"
texts="$(dirname "$(first .cache/fixtures/austen/persuasion.txt "$GPU/austen/persuasion.txt")")"
if [ -z "$ort" ] || [ -z "$model" ] || [ "$texts" = . ]; then
  say "error: need libonnxruntime ($ort), a model ($model) and Austen texts ($texts): stage them with --stage"
  exit 1
fi
say "model: $model; CPU ONNX Runtime: $ort"

# 2. Masks and timings on random matrices.
if [ "$REQUIRE_CUDA" = 1 ] && [[ $CHECKS == *" kernels "* ]]; then
  say "kernels --check ..."
  if timeout "$(left 240)" "$bin" kernels --check --out "$work/gpu-masks.md" 2>>"$log"; then
    say "kernels --check: every mask identical"
  else
    say "error: kernels --check failed (exit $?), see gpu-check.log"
    status=1
  fi
fi

# Runs one job on each of several setups; sets dir (its folder), ok and secs (seconds per setup).
# Arguments: the job's name, the setups as "label:device:library[:sums]" (sums: NEUROAL_ONNX_SUMS),
# `--`, then the job's flags. Each setup writes <dir>/<label>/model.onnx, report.json and stderr.
jobs=0
run_setups() {
  local name="$1" setup label dev lib sums t0
  local -a setups=()
  shift
  while [ "$1" != -- ]; do setups+=("$1"); shift; done
  shift
  dir="$work/job$jobs"
  jobs=$((jobs + 1))
  ok=1
  secs=()
  for setup in "${setups[@]}"; do
    IFS=: read -r label dev lib sums <<<"$setup"
    mkdir -p "$dir/$label"
    t0=$SECONDS
    if ! NEUROAL_ONNX_SUMS="$sums" timeout "$(left)" "$bin" "$model" "$dir/$label/model.onnx" --device "$dev" \
      --ort-lib "$lib" "$@" >"$dir/$label/report.json" 2>"$dir/$label/stderr"; then
      say "$name --device $dev: failed: $(tail -2 "$dir/$label/stderr")"
      ok=0
      return
    fi
    secs+=("$((SECONDS - t0))")
  done
}

common=(--eval-text "$texts/persuasion.txt" --seqlen 128 --eval-windows 4 --json --tasks lm)
calib=(--calib "$texts/emma.txt" --nsamples 8)

# 3. CUDA masks against CPU masks, ONNX Runtime on the CPU in both runs, with the same threads
# and one search job in both: ONNX Runtime's float sums change with its thread count (SmolLM2,
# Wanda at 70%: 16 threads against 4 flip 2.75% of the mask bits, docs/gpu.md), and by default
# the CUDA path runs one search job where the CPU path runs up to four, each on a share of the
# cores.
masks_flags=(--threads "$(nproc)" --search-jobs 1)
{
  echo "# CUDA vs CPU masks, end to end: $model"
  echo
  echo "ONNX Runtime on the CPU ($ort) in both runs; masks on the GPU (--device auto) or the CPU (--device cpu)."
  echo
  echo "| job | output bytes | perplexity, CUDA masks | perplexity, CPU masks | seconds CUDA / CPU |"
  echo "|---|---|---:|---:|---|"
} >"$work/gpu-prune.md"
masks_job() {
  local name="$1" same=identical file ppl=()
  shift
  run_setups "$name" "gpu:auto:$ort" "cpu:cpu:$ort" -- "${common[@]}" "${masks_flags[@]}" "$@"
  [ "$ok" = 1 ] || { status=1; return; }
  ppl=("$(field "$dir/gpu/report.json" 'r["evaluation"][0]["pruned"]["perplexity"]')"
    "$(field "$dir/cpu/report.json" 'r["evaluation"][0]["pruned"]["perplexity"]')")
  if grep -q "CUDA mask kernels unavailable" "$dir/gpu/stderr"; then
    say "$name: $(grep "CUDA mask kernels unavailable" "$dir/gpu/stderr")"
    [ "$REQUIRE_CUDA" = 1 ] && status=1
  fi
  for file in model.onnx model.onnx.data; do
    [ -e "$dir/gpu/$file" ] || [ -e "$dir/cpu/$file" ] || continue
    cmp -s "$dir/gpu/$file" "$dir/cpu/$file" || same="**DIFFERENT** ($file)"
  done
  [ "${ppl[0]}" = "${ppl[1]}" ] || same="$same, **perplexity differs**"
  [ "$same" = identical ] || status=1
  echo "| $name | $same | ${ppl[0]} | ${ppl[1]} | ${secs[0]}/${secs[1]} |" >>"$work/gpu-prune.md"
  say "$name: $same (perplexity ${ppl[0]} / ${ppl[1]})"
}
if [[ $CHECKS == *" masks "* ]]; then
  masks_job "magnitude 0.7" --sparsity 0.7 --prune-method magnitude --top-up uniform
  masks_job "wanda 0.7" --sparsity 0.7 --prune-method wanda --top-up uniform "${calib[@]}"
  masks_job "wanda 2:4" --sparsity 0.5 --nm 2:4 --prune-method wanda --top-up uniform "${calib[@]}"
  masks_job "wanda neuroal row 0.7" --sparsity 0.7 --prune-method wanda --top-up neuroal --neuroal-step row "${calib[@]}"
fi

# 4. ONNX Runtime's CUDA execution provider. The machine's Python onnxruntime first, when it
# offers CUDA (its site-packages/nvidia is found by the preload), else the staged library with
# the Python `nvidia` packages linked beside it.
ort_gpu="$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, onnxruntime
if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
    libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))
    print(libs[0] if libs else "")
EOF
)"
if [ -z "$ort_gpu" ]; then
  ort_gpu="$(first .cache/ort-gpu/lib/libonnxruntime.so "$GPU/ort-gpu/lib/libonnxruntime.so")"
  py_nvidia="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
  if [ -n "$ort_gpu" ] && [ ! -e "$(dirname "$(dirname "$ort_gpu")")/nvidia" ] && [ -n "$py_nvidia" ]; then
    ln -s "$py_nvidia" "$(dirname "$(dirname "$ort_gpu")")/nvidia"
  fi
fi
# A dry run asks for `auto`, which falls back to the CPU: the rest of the step still runs.
ep_device=$([ "$REQUIRE_CUDA" = 1 ] && echo cuda || echo auto)
{
  echo "# ONNX Runtime's CUDA execution provider against the CPU: $model"
  echo
  echo "Wanda + uniform at 70%; calibration on *Emma* (32 windows of 256 tokens), perplexity on *Persuasion* (8 windows of 256)."
  echo "CUDA: $ort_gpu --device $ep_device (provider and mask kernels); once with the activation sums in the stage models (the default with CUDA), once on the host (NEUROAL_ONNX_SUMS=host). CPU: $ort --device cpu."
  echo
  echo "| run (device, where the activation sums were taken) | dense perplexity | pruned perplexity | seconds | calibration forward s | statistics s |"
  echo "|---|---:|---:|---:|---:|---:|"
} >"$work/gpu-ep.md"
if [[ $CHECKS != *" ep "* ]]; then
  say "CUDA execution provider: skipped (CHECKS)"
  echo "Skipped (CHECKS=$CHECKS)." >>"$work/gpu-ep.md"
elif [ -z "$ort_gpu" ]; then
  say "CUDA execution provider: skipped (the machine's onnxruntime has no CUDA provider and the ep bundle was not staged)"
  echo "Skipped: no ONNX Runtime with a CUDA provider (stage the ep bundle)." >>"$work/gpu-ep.md"
else
  say "CUDA execution provider: $ort_gpu, --device $ep_device ..."
  run_setups "wanda 0.7 (execution provider)" "cuda:$ep_device:$ort_gpu" "cpu:cpu:$ort" \
    "cuda-host-sums:$ep_device:$ort_gpu:host" -- --eval-text "$texts/persuasion.txt" --seqlen 256 --eval-windows 8 --json --tasks lm \
    --calib "$texts/emma.txt" --nsamples 32 --sparsity 0.7 --prune-method wanda --top-up uniform
  if [ "$ok" = 1 ]; then
    i=0
    for label in cuda cpu cuda-host-sums; do
      r="$dir/$label/report.json"
      echo "| $label ($(field "$r" 'r["onnx_runtime"]["device"]'), sums: $(field "$r" 'r["calibration"]["activation_sums"]')) | $(field "$r" 'r["evaluation"][0]["dense"]["perplexity"]') |" \
        "$(field "$r" 'r["evaluation"][0]["pruned"]["perplexity"]') | ${secs[$i]} |" \
        "$(field "$r" 'round(r["timings_s"].get("prune_forward", 0), 2)') |" \
        "$(field "$r" 'round(r["timings_s"].get("prune_statistics", 0), 2)') |" >>"$work/gpu-ep.md"
      i=$((i + 1))
    done
    # The fraction of prunable weights whose keep/prune decision differs.
    diff="$(python3 - "$dir/cuda/model.onnx" "$dir/cpu/model.onnx" <<'EOF' 2>>"$log" || echo "?"
import sys
import numpy as np
import onnx
from onnx import numpy_helper
a, b = (onnx.load(p) for p in sys.argv[1:3])
tensors = {t.name: t for t in b.graph.initializer}
differ = total = 0
for t in a.graph.initializer:
    x = numpy_helper.to_array(t)
    y = numpy_helper.to_array(tensors[t.name])
    if x.ndim == 2 and x.size > 1024 and np.mean(y == 0) > 0.1:
        differ += int(np.count_nonzero((x == 0) != (y == 0)))
        total += x.size
print(f"{differ / max(total, 1):.2e}")
EOF
)"
    echo >>"$work/gpu-ep.md"
    echo "Mask bits that differ between the two runs: $diff of the prunable weights." >>"$work/gpu-ep.md"
    say "execution provider: device $(field "$dir/cuda/report.json" 'r["onnx_runtime"]["device"]'), mask bits differing $diff"
    if [ "$(field "$dir/cuda/report.json" 'r["onnx_runtime"]["device"]')" != cuda ] && [ "$REQUIRE_CUDA" = 1 ]; then
      say "error: the --device cuda run did not run on CUDA"
      status=1
    fi
  else
    status=1
  fi
fi

[ -f "$work/gpu-masks.md" ] && cat "$work/gpu-masks.md"
cat "$work/gpu-prune.md" "$work/gpu-ep.md"
say "gpu-check: $([ $status = 0 ] && echo passed || echo FAILED) in $SECONDS s"
exit $status
