#!/usr/bin/env bash
# Fetches libonnxruntime from the PyPI onnxruntime wheel into DEST/lib (default .cache/ort) and
# prints the library's path. Idempotent: a library already there is kept.
#   ORT_VERSION   ONNX Runtime version (default 1.32.0)
#   ORT_FLAVOR    cpu (PyPI onnxruntime) or gpu (PyPI onnxruntime-gpu, with its provider libraries;
#                 scripts/fetch-ort-gpu.sh also fetches the NVIDIA libraries the CUDA provider needs)
set -euo pipefail

version="${ORT_VERSION:-1.32.0}"
flavor="${ORT_FLAVOR:-cpu}"
dest="${1:-.cache/ort}"
lib_dir="$dest/lib"
lib="$lib_dir/libonnxruntime.so.$version"

case "$flavor" in
  cpu) package=onnxruntime ;;
  gpu) package=onnxruntime-gpu ;;
  *) echo "ORT_FLAVOR must be cpu or gpu, not '$flavor'" >&2; exit 2 ;;
esac

if [ ! -e "$lib" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "fetching $package $version from PyPI ..." >&2
  # The wheel is tagged for CPython, but the shared library inside does not depend on Python:
  # pin the platform tags so any local Python can download it.
  python3 -m pip download "$package==$version" --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    --dest "$work" --quiet
  mkdir -p "$lib_dir"
  python3 - "$work" "$lib_dir" <<'PY'
import glob, os, sys, zipfile
wheel_dir, lib_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(wheel_dir, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            tmp = os.path.join(lib_dir, base + ".part")
            with open(tmp, "wb") as f:
                f.write(z.read(name))
            os.replace(tmp, os.path.join(lib_dir, base))
PY
  if [ ! -e "$lib" ]; then
    echo "the $package $version wheel has no onnxruntime/capi/libonnxruntime.so.$version" \
      "(wheels of 1.18 and older link ONNX Runtime into the Python module): use 1.19 or later" >&2
    exit 1
  fi
fi
ln -sf "libonnxruntime.so.$version" "$lib_dir/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.1" "$lib_dir/libonnxruntime.so"
echo "$lib"
