#!/usr/bin/env bash
# Compares the bytes this checkout writes with those BASE_REV writes (default `main`), for a change
# that must not change any output: every tiny fixture convention (.cache/fixtures/tiny/*, from
# `make setup`) pruned with each base method and allocation on small calibration, by both binaries.
# Prints one row per job with the SHA-256 verdict for OUT.onnx and OUT.onnx.data, and exits 1 on
# any difference (a job that fails on one side only, or with another exit code, is one too).
#
#   scripts/check-output-bytes.sh [BASE_REV]
#
# BASE_REV is checked out in a temporary git worktree (removed on exit) and built with
# CARGO_TARGET_DIR=target/check-output-bytes, kept between runs; the first run seeds that folder
# with a copy of target/release's dependencies, so only neuroal-onnx itself is compiled for the
# base. This checkout (its working tree, uncommitted changes included) is built in target/release
# as usual. Both binaries load the same ONNX Runtime, .cache/ort/lib/libonnxruntime.so. A few
# minutes on 2 cores once both are built.
set -euo pipefail
base_rev=${1:-main}
root=$(git rev-parse --show-toplevel)
cd "$root"
fixtures=$root/.cache/fixtures
ort_lib=$root/.cache/ort/lib/libonnxruntime.so
calib=$fixtures/austen/emma.txt
for need in "$ort_lib" "$calib" "$fixtures/tiny"; do
  [ -e "$need" ] || { echo "missing $need: run \`make setup\` first" >&2; exit 2; }
done
base_commit=$(git rev-parse --verify "$base_rev^{commit}")

tmp=$(mktemp -d)
cleanup() {
  git worktree remove --force "$tmp/base" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "building this checkout (target/release)" >&2
cargo build --release --quiet
head_bin=$root/target/release/neuroal-onnx

echo "building $base_rev ($base_commit) in a temporary worktree (target/check-output-bytes)" >&2
git worktree add --quiet --detach "$tmp/base" "$base_commit"
base_target=$root/target/check-output-bytes
if [ ! -d "$base_target/release" ]; then
  mkdir -p "$base_target/release"
  cp -a target/release/deps target/release/build target/release/.fingerprint "$base_target/release/"
fi
CARGO_TARGET_DIR=$base_target cargo build --release --quiet --manifest-path "$tmp/base/Cargo.toml"
base_bin=$tmp/neuroal-onnx-base
cp "$base_target/release/neuroal-onnx" "$base_bin"

# Each method and allocation, on small calibration; the last writes its own calibration text.
cal="--calib $calib --nsamples 4 --seqlen 32"
combos=(
  "--prune-method magnitude --top-up uniform"
  "--prune-method wanda --top-up neuroal $cal"
  "--prune-method sparsegpt --top-up uniform $cal"
  "--prune-method multiflow --top-up owl $cal"
  "--prune-method wanda --top-up alpha $cal"
  "--prune-method wanda --top-up dsnot $cal"
  "--prune-method wanda --top-up dlp $cal"
  "--prune-method ria --top-up evo --evo-generations 3 $cal"
  "--prune-method wanda --top-up uniform --nm 2:4 $cal"
  "--prune-method wanda --top-up uniform --nsamples 2 --seqlen 16"
)

# SHA-256 of a file, or "-" when it does not exist.
digest() { if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; else echo -; fi; }

# Runs one binary on one job; prints "exit model-digest data-digest".
run_job() {
  local bin=$1 model=$2 out=$3 code=0
  shift 3
  # shellcheck disable=SC2068 # the flags are split on purpose
  timeout 600 "$bin" "$model" "$out" --sparsity 0.5 --tasks none --device cpu --quiet \
    --ort-lib "$ort_lib" $@ >/dev/null 2>"$out.stderr" || code=$?
  echo "$code $(digest "$out") $(digest "$out.data")"
}

# "same" when two digests agree, else "DIFF".
verdict() { if [ "$1" = "$2" ]; then echo same; else echo DIFF; fi; }

differences=0
jobs=0
printf '%-18s %-96s %-9s %-6s %s\n' fixture flags exit model data
for dir in "$fixtures"/tiny/*/; do
  name=$(basename "$dir")
  model=$dir/model.onnx
  [ -f "$model" ] || model=$dir/decoder_model_merged.onnx
  [ -f "$model" ] || continue
  for flags in "${combos[@]}"; do
    jobs=$((jobs + 1))
    mkdir -p "$tmp/$jobs/base" "$tmp/$jobs/head"
    read -r base_code base_model base_data < <(run_job "$base_bin" "$model" "$tmp/$jobs/base/out.onnx" $flags)
    read -r head_code head_model head_data < <(run_job "$head_bin" "$model" "$tmp/$jobs/head/out.onnx" $flags)
    model_v=$(verdict "$base_model" "$head_model")
    data_v=$(verdict "$base_data" "$head_data")
    exit_v=$base_code/$head_code
    if [ "$base_code" != "$head_code" ] || [ "$model_v" = DIFF ] || [ "$data_v" = DIFF ]; then
      differences=$((differences + 1))
    fi
    [ "$base_model" = - ] && model_v=none
    [ "$base_data" = - ] && data_v=none
    printf '%-18s %-96s %-9s %-6s %s\n' "$name" "${flags//$fixtures\//}" "$exit_v" "$model_v" "$data_v"
  done
done
echo "$jobs jobs against $base_rev ($base_commit): $differences with different exit codes or bytes"
[ "$differences" -eq 0 ]
