"""Checks a pruned model against its dense input without loading either whole into memory.

For every matrix in the report's `sparsity.per_matrix`, both files' bytes are memory-mapped one
matrix at a time and compared:

- every weight the output keeps (non-zero) holds the input's exact bits;
- per output row, the zeros are at least the target's count `floor(in * target)` and at most that
  count plus the zeros the input row already held (a weight that was zero already scores lowest);
- a matrix stored with its inputs reordered (the report's `input_order`, RIA with `--nm`) is compared
  with the input's matrix in that order;
- with `--exact-rows` (an allocation that gives every row of a matrix one sparsity: uniform, OWL,
  AlphaPruning, DLP, evo, or NeuroAL's block step alone), rows of an input without zeros hold
  exactly that count.

With `--run`, the output is then opened whole in ONNX Runtime from another working directory, with
graph optimizations off (constant folding would make a float32 copy of every 16-bit weight), and
run on one short window; its logits must have the expected shape and be finite unless
`--allow-nonfinite` (random weights overflow). The JSON gives the check's own peak RSS.

    python scripts/verify-pruned.py DENSE.onnx PRUNED.onnx REPORT.json [--exact-rows] [--run]

Prints one JSON object; exits 1 on the first violated check, naming the tensor and the row.
"""

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper

DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.BFLOAT16: np.uint16,  # compared bit for bit, zeros tested on the bits
}


def fail(message):
    print(f"verify-pruned: {message}", file=sys.stderr)
    sys.exit(1)


class Weights:
    """An ONNX model's initializers, read one at a time through memory maps of their data files."""

    def __init__(self, path):
        self.folder = os.path.dirname(os.path.abspath(path))
        self.model = onnx.load(path, load_external_data=False)
        self.tensors = {t.name: t for t in self.model.graph.initializer}
        self.maps = {}

    def indices(self, name):
        """An int64 initializer (an input order), read whole."""
        t = self.tensors.get(name)
        if t is None or t.data_type != onnx.TensorProto.INT64:
            fail(f"{name}: no int64 initializer of that name")
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        raw = np.fromfile(os.path.join(self.folder, info["location"]), dtype=np.uint8,
                          count=int(info["length"]), offset=int(info.get("offset", 0)))
        return raw.view(np.int64)

    def array(self, name):
        t = self.tensors.get(name)
        if t is None:
            fail(f"{name}: not an initializer of the model")
        dtype = DTYPES.get(t.data_type)
        if dtype is None:
            fail(f"{name}: data type {t.data_type} is not a prunable float type")
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t).view(dtype) if dtype is np.uint16 else numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        location = os.path.join(self.folder, info["location"])
        if location not in self.maps:
            self.maps[location] = np.memmap(location, dtype=np.uint8, mode="r")
        offset, count = int(info.get("offset", 0)), math.prod(t.dims)
        raw = self.maps[location][offset : offset + count * np.dtype(dtype).itemsize]
        return raw.view(dtype).reshape(tuple(t.dims))


def out_in_axes(model, name):
    """Whether the stored matrix is [out, in] (Gemm with transB) rather than [in, out] (MatMul's B),
    following the Casts a 16-bit weight may pass through first."""
    for node in model.graph.node:
        if name in node.input[1:2]:
            if node.op_type == "MatMul":
                return False
            if node.op_type == "Gemm":
                return bool(next((a.i for a in node.attribute if a.name == "transB"), 0))
        if node.op_type == "Cast" and node.input[0] == name:
            return out_in_axes(model, node.output[0])
    fail(f"{name}: no MatMul or Gemm reads it as its second input; this layout is not checked")


def check_matrices(dense, pruned, report, exact_rows):
    checked = rows_total = rows_exact = new_zeros_total = 0
    for m in report["sparsity"]["per_matrix"]:
        name, (out_f, in_f), target = m["weight"], m["shape"], m["target"]
        d, p = dense.array(name), pruned.array(name)
        if d.shape != p.shape:
            fail(f"{name}: shape {p.shape} in the output, {d.shape} in the input")
        out_in = out_in_axes(pruned.model, name)
        if out_in:
            d, p = d.reshape(out_f, in_f), p.reshape(out_f, in_f)
        else:
            d, p = d.reshape(in_f, out_f).T, p.reshape(in_f, out_f).T
        if m.get("input_order"):
            order = pruned.indices(m["input_order"])
            if sorted(order.tolist()) != list(range(in_f)):
                fail(f"{m['input_order']}: not a permutation of the {in_f} inputs of {name}")
            d = d[:, order]  # the input's matrix in the stored input order
        bits = {2: np.uint16, 4: np.uint32}[d.dtype.itemsize]
        d_bits, p_bits = d.view(bits), p.view(bits)
        zero_bits = np.array(0, dtype=bits)
        sign_mask = np.array(1 << (8 * np.dtype(bits).itemsize - 1), dtype=bits)
        p_zero = (p_bits & ~sign_mask) == zero_bits
        d_zero = (d_bits & ~sign_mask) == zero_bits
        changed = ~p_zero & (p_bits != d_bits)
        if changed.any():
            r = int(np.argwhere(changed)[0][0])
            fail(f"{name}: row {r} changes a weight it keeps")
        k = math.floor(in_f * target)
        zeros = p_zero.sum(axis=1)
        before = d_zero.sum(axis=1)
        new = (p_zero & ~d_zero).sum(axis=1)
        if exact_rows:
            low, high = zeros < k, zeros > k + before
            bad = np.flatnonzero(low | high | (new > k))
            if bad.size:
                r = int(bad[0])
                fail(
                    f"{name}: row {r} holds {int(zeros[r])} zeros ({int(new[r])} new, {int(before[r])} before); "
                    f"the target {target} of {in_f} inputs prunes {k}"
                )
            rows_exact += int(((zeros == k) & (before == 0)).sum())
        checked += 1
        rows_total += out_f
        new_zeros_total += int(new.sum())
    return {
        "matrices": checked,
        "rows": rows_total,
        "rows_with_exactly_the_target_count": rows_exact if exact_rows else None,
        "weights_zeroed": new_zeros_total,
    }


def run_whole(path, window, allow_nonfinite):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as elsewhere:
        os.chdir(elsewhere)  # the output must not depend on the working directory
        try:
            clock = time.time()
            session = ort.InferenceSession(os.path.abspath(os.path.join(cwd, path)), options, providers=["CPUExecutionProvider"])
            opened = time.time() - clock
            feeds = {}
            for i in session.get_inputs():
                if i.name == "input_ids":
                    feeds[i.name] = (np.arange(window, dtype=np.int64) % 97 + 3).reshape(1, window)
                elif i.name == "attention_mask":
                    feeds[i.name] = np.ones((1, window), dtype=np.int64)
                elif i.name == "position_ids":
                    feeds[i.name] = np.arange(window, dtype=np.int64).reshape(1, window)
                elif "past" in i.name:
                    shape = [d if isinstance(d, int) else (1 if "batch" in d else 0) for d in i.shape]
                    dtype = np.float16 if i.type == "tensor(float16)" else np.float32
                    feeds[i.name] = np.zeros(shape, dtype=dtype)
                else:
                    fail(f"{path}: input {i.name} is not one this check knows how to feed")
            clock = time.time()
            logits = session.run(["logits"], feeds)[0]
            ran = time.time() - clock
        finally:
            os.chdir(cwd)
    if logits.shape[:2] != (1, window):
        fail(f"{path}: logits of shape {logits.shape}, expected (1, {window}, vocab)")
    finite = bool(np.isfinite(logits).all())
    if not finite and not allow_nonfinite:
        fail(f"{path}: non-finite logits")
    return {"open_s": round(opened, 1), "run_s": round(ran, 1), "logits": list(logits.shape), "finite": finite}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dense")
    parser.add_argument("pruned")
    parser.add_argument("report")
    parser.add_argument("--exact-rows", action="store_true")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--allow-nonfinite", action="store_true")
    args = parser.parse_args()
    report = json.load(open(args.report))
    clock = time.time()
    result = check_matrices(Weights(args.dense), Weights(args.pruned), report, args.exact_rows)
    result["check_s"] = round(time.time() - clock, 1)
    if args.run:
        result["onnx_runtime"] = run_whole(args.pruned, args.window, args.allow_nonfinite)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
