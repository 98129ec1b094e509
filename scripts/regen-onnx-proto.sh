#!/usr/bin/env bash
# Regenerates src/onnx/proto.rs from proto/onnx.proto with prost-build and a vendored protoc, in a
# throwaway Cargo project, so that building neuroal-onnx never needs protoc.
#   scripts/regen-onnx-proto.sh            # after replacing proto/onnx.proto with a newer one
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "regen-onnx-proto"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
prost-build = "0.14"
protoc-bin-vendored = "3"
TOML
cat > "$work/src/main.rs" <<'RS'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (proto, out) = (&args[1], &args[2]);
    let include = std::path::Path::new(proto).parent().expect("proto folder");
    // SAFETY (edition 2021: set_var is safe): single-threaded program before any other work.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    prost_build::Config::new()
        .bytes(["."]) // bytes fields as prost::bytes::Bytes: zero-copy slices of the model file
        .out_dir(out)
        .compile_protos(&[proto], &[include])
        .expect("prost-build onnx.proto");
}
RS
cargo run --quiet --release --manifest-path "$work/Cargo.toml" -- "$root/proto/onnx.proto" "$work"
cp "$work/onnx.rs" "$root/src/onnx/proto.rs"
rustfmt --edition 2021 "$root/src/onnx/proto.rs"
echo "wrote src/onnx/proto.rs"
