#!/usr/bin/env bash
# Fetches NVRTC (the CUDA run-time compiler) from the PyPI wheel nvidia-cuda-nvrtc into DEST/lib
# (default .cache/nvrtc) and prints the library's path. NVRTC compiles kernels/*.cu to PTX with no
# GPU and no driver, which is what CI checks. Idempotent: a library already there is kept, and
# the wheel is kept in .cache/downloads.
#   NVRTC_VERSION   pip version specifier (default 13.*: libnvrtc.so.13, what cudarc's cuda-13000
#                   build looks for). PTX from an NVRTC newer than a GPU's driver does not load
#                   there: on a GPU machine prefer the NVRTC of its own CUDA toolkit.
set -euo pipefail

version="${NVRTC_VERSION:-13.*}"
dest="${1:-.cache/nvrtc}"
downloads="${NVRTC_DOWNLOADS:-.cache/downloads}"
lib_dir="$dest/lib"
lib="$lib_dir/libnvrtc.so.13"

if [ ! -e "$lib" ]; then
  mkdir -p "$downloads"
  echo "fetching nvidia-cuda-nvrtc $version from PyPI ..." >&2
  # A py3-none manylinux wheel: the libraries inside do not depend on Python. pip reuses a wheel
  # already in $downloads.
  python3 -m pip download "nvidia-cuda-nvrtc==$version" --no-deps --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
    --dest "$downloads" --quiet --disable-pip-version-check
  mkdir -p "$lib_dir"
  python3 - "$downloads" "$lib_dir" "$version" <<'PY'
import fnmatch, glob, os, sys, zipfile
downloads, lib_dir, spec = sys.argv[1:4]
def version(path):
    v = os.path.basename(path).split("-")[1]
    return tuple(int(p) if p.isdigit() else p for p in v.split("."))
wheels = [w for w in glob.glob(os.path.join(downloads, "nvidia_cuda_nvrtc-*.whl"))
          if fnmatch.fnmatch(os.path.basename(w).split("-")[1], spec)]
if not wheels:
    sys.exit(f"no nvidia_cuda_nvrtc wheel matching {spec} in {downloads}")
wheel = max(wheels, key=version)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if "/lib/" in n and ".so" in os.path.basename(n)]
    if not any(os.path.basename(n) == "libnvrtc.so.13" for n in names):
        sys.exit(f"{wheel} has no lib/libnvrtc.so.13")
    # libnvrtc.so.13 last: its presence marks a complete extraction.
    for name in sorted(names, key=lambda n: os.path.basename(n) == "libnvrtc.so.13"):
        base = os.path.basename(name)
        tmp = os.path.join(lib_dir, base + ".part")
        with z.open(name) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(lib_dir, base))
PY
fi
echo "$lib"
