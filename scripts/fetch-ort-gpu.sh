#!/usr/bin/env bash
# Fetches ONNX Runtime with its CUDA execution provider, and the NVIDIA libraries that provider
# needs, from PyPI into DEST (default .cache/ort-gpu), and prints the path of libonnxruntime:
#   DEST/lib/libonnxruntime.so.<version>           from onnxruntime-gpu, with
#   DEST/lib/libonnxruntime_providers_{cuda,shared,tensorrt}.so
#   DEST/nvidia/<pkg>/lib/*.so.*                   from the NVIDIA wheels, in their own layout
#                                                  (nvidia/cu13/lib, nvidia/cudnn/lib)
#   DEST/fetched.txt                               the wheels used, with their sizes in bytes
# neuroal-onnx preloads DEST/nvidia/*/lib when it loads DEST/lib/libonnxruntime.so with
# --device auto or cuda (src/runtime/mod.rs), so no LD_LIBRARY_PATH is needed. The NVIDIA wheels
# are the ones named by onnxruntime-gpu's `cuda` and `cudnn` extras (its METADATA Requires-Dist),
# plus cuBLAS and nvJitLink of the same CUDA major, which the provider and cuFFT load. The host
# still needs the NVIDIA driver (libcuda.so.1), which no wheel provides, new enough for that CUDA
# major (CUDA 13: driver 580 or later). About 1.6 GB of wheels, 2.4 GB unpacked; the wheels are
# deleted afterwards. Idempotent: a complete DEST (fetched.txt present) is kept.
#   ORT_GPU_VERSION   onnxruntime-gpu version (default: the newest pip finds; it must ask for
#                     CUDA 13, the CUDA major cudarc is built for)
#   CUDA_MAJOR        the CUDA major to require (default 13)
set -euo pipefail

version="${ORT_GPU_VERSION:-}"
cuda_major="${CUDA_MAJOR:-13}"
dest="${1:-.cache/ort-gpu}"
stamp="$dest/fetched.txt"

if [ -e "$stamp" ] && { [ -z "$version" ] || grep -q "^onnxruntime_gpu-$version-" "$stamp"; }; then
  echo "$dest/lib/$(readlink "$dest/lib/libonnxruntime.so.1")"
  exit 0
fi

# Wheels are large: download next to DEST, not into a possibly small /tmp.
mkdir -p "$(dirname "$dest")"
work="$(mktemp -d "$dest.download.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pip_download() {
  python3 -m pip download --only-binary=:all: --disable-pip-version-check --quiet \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 --implementation cp "$@"
}

echo "fetching onnxruntime-gpu ${version:-(newest)} from PyPI ..." >&2
# The wheel is tagged for CPython, but the libraries inside do not depend on Python.
pip_download --no-deps --dest "$work/ort" "onnxruntime-gpu${version:+==$version}"

# The NVIDIA requirements of the `cuda` and `cudnn` extras, checked against CUDA_MAJOR.
requirements="$(python3 - "$work/ort" "$cuda_major" <<'PY'
import glob, os, re, sys, zipfile
wheel_dir, major = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(wheel_dir, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
reqs = []
for line in lines:
    m = re.match(r'Requires-Dist:\s*([^;]+);\s*extra\s*==\s*"(cuda|cudnn)"', line)
    if m:
        reqs.append(m.group(1).replace(" ", ""))
runtime = [r for r in reqs if r.startswith("nvidia-cuda-runtime")]
if not runtime or not re.search(r"[~=]=\s*%s(\.|$)" % major, runtime[0]):
    sys.exit(f"{os.path.basename(wheel)}: its `cuda` extra asks for {runtime or 'no CUDA runtime'}, "
             f"not CUDA {major}; set ORT_GPU_VERSION to a version built for CUDA {major}")
# cuBLAS (the provider links it) and nvJitLink (cuFFT links it) come in as unpinned dependencies
# of cuDNN and cuFFT: pin them to the same CUDA major, named as the runtime is (CUDA 12's wheels
# end in -cu12).
suffix = f"-cu{major}" if re.match(r"nvidia-cuda-runtime-cu\d+", runtime[0]) else ""
reqs += [f"nvidia-cublas{suffix}~={major}.0", f"nvidia-nvjitlink{suffix}~={major}.0"]
print("\n".join(reqs))
PY
)"
echo "fetching the NVIDIA wheels:" $requirements "..." >&2
# shellcheck disable=SC2086 # one requirement per word
pip_download --dest "$work/nvidia" $requirements

# Unpacked into a fresh tree that replaces DEST only when complete.
lib="$(python3 - "$work" "$work/tree" <<'PY'
import glob, os, shutil, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
def extract(z, name, to):
    os.makedirs(os.path.dirname(to), exist_ok=True)
    tmp = to + ".part"
    with z.open(name) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.chmod(tmp, 0o755)
    os.replace(tmp, to)
fetched = []
nvidia = sorted(glob.glob(os.path.join(work, "nvidia", "*.whl")))
for wheel in nvidia:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            parts = name.split("/")
            # nvidia/<pkg>/lib/<file>.so[.N]
            if len(parts) == 4 and parts[0] == "nvidia" and parts[2] == "lib" and ".so" in parts[3]:
                extract(z, name, os.path.join(dest, *parts))
    fetched.append(wheel)
ort = glob.glob(os.path.join(work, "ort", "*.whl"))[0]
with zipfile.ZipFile(ort) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/libonnxruntime") and ".so" in base:
            extract(z, name, os.path.join(dest, "lib", base))
            if base.startswith("libonnxruntime.so."):
                lib = base
fetched.insert(0, ort)
with open(os.path.join(dest, "fetched.txt"), "w") as f:
    for wheel in fetched:
        f.write(f"{os.path.basename(wheel)} {os.path.getsize(wheel)}\n")
print(lib)
PY
)"
ln -s "$lib" "$work/tree/lib/libonnxruntime.so.1"
ln -s "libonnxruntime.so.1" "$work/tree/lib/libonnxruntime.so"
rm -rf "$dest"
mv "$work/tree" "$dest"
du -sh "$dest" >&2
echo "$dest/lib/$lib"
