"""Writes the fuzzer's seed corpus and the hand-made hostile inputs of the regression test.

    .cache/venv/bin/python fuzz/make_seeds.py .cache/fixtures fuzz/seeds/load_model tests/fuzz-regressions

Needs the fixture generator's virtualenv (`make setup`: numpy and onnx). Seeds are the tiny
fixtures with every large initializer shrunk (each dimension divided by 32, so that equal
dimensions stay equal and discovery still finds the blocks), each in two forms: all data inline
(a bare model.onnx), and all data external in model.onnx_data (the fuzz input format of
fuzz_targets/load_model.rs: b"NXFZ", u32 LE model length, model, data). The regression inputs
are the cases the fuzzer must never choke on, made by hand.
"""

import os
import struct
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors

SHRINK = 32
KEEP = 16  # initializers of at most this many elements are kept as they are


def packed(model_bytes, data_bytes):
    return b"NXFZ" + struct.pack("<I", len(model_bytes)) + model_bytes + data_bytes


def external_form(model):
    """The model with every initializer in model.onnx_data, as one fuzz input."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        m = onnx.ModelProto()
        m.CopyFrom(model)
        onnx.save(
            m,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx_data",
            size_threshold=0,
        )
        with open(path, "rb") as f:
            model_bytes = f.read()
        data_path = os.path.join(tmp, "model.onnx_data")
        data_bytes = open(data_path, "rb").read() if os.path.exists(data_path) else b""
    return packed(model_bytes, data_bytes)


def shrink(model):
    for t in _get_all_tensors(model):
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n <= KEEP:
            continue
        shape = [max(1, d // SHRINK) for d in t.dims]
        count = int(np.prod(shape))
        if t.data_type == TensorProto.BFLOAT16:
            # Raw 16-bit words: numpy has no bfloat16 of its own.
            words = np.frombuffer(t.raw_data, dtype="<u2")[:count].tobytes()
            del t.dims[:]
            t.dims.extend(shape)
            t.raw_data = words
            continue
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64):
            continue
        arr = numpy_helper.to_array(t)
        small = arr.reshape(-1)[:count].reshape(shape)
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(small), t.name))
    # dynamo's per-node namespace and class hierarchy are most of its bytes and read by nothing.
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model


def seeds(fixtures, out):
    tiny = os.path.join(fixtures, "tiny")
    for name in sorted(os.listdir(tiny)):
        folder = os.path.join(tiny, name)
        for f in sorted(os.listdir(folder)):
            if not f.endswith(".onnx"):
                continue
            model = shrink(onnx.load(os.path.join(folder, f)))
            inline = model.SerializeToString()
            write(os.path.join(out, f"seed-{name}.onnx"), inline)
            write(os.path.join(out, f"seed-{name}-external.bin"), external_form(model))
    # OPT's learned positions: Gather(table, Add(position_ids, 2)).
    m = with_positions([constant("two", int64("two", 2)),
                        helper.make_node("Add", ["position_ids", "two"], ["pos"], name="add")],
                       "pos")
    write(os.path.join(out, "seed-positions.onnx"), m.SerializeToString())
    write(os.path.join(out, "seed-minimal.onnx"), minimal().SerializeToString())
    write(os.path.join(out, "seed-minimal-external.bin"), external_form(minimal()))


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    print(f"{path}: {len(data)} bytes")


def weight(name, shape, seed):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def minimal(hidden=4, vocab=8):
    """Two decoder blocks, named like optimum's exports, small enough to read in a hex dump."""
    nodes = [helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["h0"],
                              name="/model/embed_tokens/Gather")]
    inits = [weight("model.embed_tokens.weight", (vocab, hidden), 0)]
    h = "h0"
    for b in range(2):
        for k, module in enumerate(["self_attn/q_proj", "mlp/down_proj"]):
            w = f"onnx::MatMul_{b}{k}"
            inits.append(weight(w, (hidden, hidden), 10 * b + k + 1))
            nodes.append(helper.make_node("MatMul", [h, w], [f"b{b}m{k}"],
                                          name=f"/model/layers.{b}/{module}/MatMul"))
            nodes.append(helper.make_node("Add", [h, f"b{b}m{k}"], [f"b{b}a{k}"],
                                          name=f"/model/layers.{b}/Add_{k}"))
            h = f"b{b}a{k}"
    inits.append(weight("lm_head.weight", (hidden, vocab), 99))
    nodes.append(helper.make_node("MatMul", [h, "lm_head.weight"], ["logits"],
                                  name="/lm_head/MatMul"))
    graph = helper.make_graph(
        nodes,
        "minimal",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", vocab])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def with_positions(index_nodes, indices, graph_inputs=()):
    """`minimal` with a learned position table gathered by `indices`, computed by `index_nodes`."""
    m = minimal()
    g = m.graph
    for name in ("position_ids",) + tuple(graph_inputs):
        g.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, [1, "n"]))
    g.initializer.append(weight("model.embed_positions.weight", (8, 4), 5))
    nodes = list(index_nodes) + [
        helper.make_node("Gather", ["model.embed_positions.weight", indices], ["positions"],
                         name="/model/embed_positions/Gather")]
    for n in reversed(nodes):
        g.node.insert(0, n)
    return m


def constant(name, tensor):
    return helper.make_node("Constant", [], [name], name=name, value=tensor)


def int64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def find(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def regressions(out):
    ok = minimal()
    write(os.path.join(out, "ok-minimal.bin"), external_form(ok))
    write(os.path.join(out, "ok-minimal-inline.bin"), ok.SerializeToString())

    whole = ok.SerializeToString()
    write(os.path.join(out, "truncated-protobuf.bin"), whole[: len(whole) - 7])
    # Field 1 (ir_version, a varint) whose continuation bit never stops.
    write(os.path.join(out, "endless-varint.bin"), b"\x08" + b"\xff" * 64)
    # A length-delimited field (graph) that claims far more bytes than the file has.
    write(os.path.join(out, "overlong-length.bin"), b"\x3a\xff\xff\xff\xff\x0f" + b"\x00" * 8)

    # dims [2^40, 2^40] with 4 bytes of raw_data, as the weight of a linear.
    m = minimal()
    t = find(m, "onnx::MatMul_00")
    del t.dims[:]
    t.dims.extend([1 << 40, 1 << 40])
    t.raw_data = b"\x00\x00\x80\x3f"
    write(os.path.join(out, "huge-dims-inline.bin"), m.SerializeToString())
    # The same stored externally: 4 bytes in the data file.
    m = minimal()
    t = find(m, "onnx::MatMul_00")
    del t.dims[:]
    t.dims.extend([1 << 30, 1 << 30])
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "model.onnx_data"), ("offset", "0"), ("length", "4")]:
        e = t.external_data.add()
        e.key, e.value = k, v
    write(os.path.join(out, "huge-dims-external.bin"),
          packed(m.SerializeToString(), b"\x00\x00\x80\x3f"))

    # External data that tries to leave the model's folder.
    for label, location in [("escaping-location", "../../etc/passwd"),
                            ("absolute-location", "/etc/passwd")]:
        m = minimal()
        t = find(m, "onnx::MatMul_00")
        size = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", location), ("offset", "0"), ("length", str(size))]:
            e = t.external_data.add()
            e.key, e.value = k, v
        write(os.path.join(out, f"{label}.bin"), packed(m.SerializeToString(), b"\x00" * size))

    # Index arithmetic in front of a position table (discovery's gathered_input and
    # constant_int): these panicked on i64 overflow or never finished before the fixes.
    big = TensorProto(name="c", data_type=TensorProto.INT64, dims=[1 << 32, 1 << 32])
    m = with_positions([constant("c", big),
                        helper.make_node("Add", ["position_ids", "c"], ["pos"], name="add")], "pos")
    write(os.path.join(out, "constant-dims-overflow.bin"), m.SerializeToString())
    m = with_positions([constant("c", int64("c", 2**63 - 1)),
                        helper.make_node("Add", ["position_ids", "c"], ["p1"], name="add1"),
                        helper.make_node("Add", ["p1", "c"], ["pos"], name="add2")], "pos")
    write(os.path.join(out, "position-offset-overflow.bin"), m.SerializeToString())
    m = with_positions([constant("c", int64("c", -2**63)),
                        helper.make_node("Sub", ["position_ids", "c"], ["pos"], name="sub")], "pos")
    write(os.path.join(out, "position-offset-negate-overflow.bin"), m.SerializeToString())
    m = with_positions([constant("c", int64("c", -2**63 + 4)),
                        helper.make_node("Add", ["position_ids", "c"], ["pos"], name="add")], "pos")
    write(os.path.join(out, "position-rows-overflow.bin"), m.SerializeToString())
    # Four levels of Add nodes, each reading the next level 400 times: 400^4 paths, minutes even
    # without the fuzzer's instrumentation.
    k = 400
    nodes = [helper.make_node("Add", ["x"] * k, ["y3"], name="a3")]
    for level in (2, 1, 0):
        nodes.append(helper.make_node("Add", [f"y{level + 1}"] * k, [f"y{level}"],
                                      name=f"a{level}"))
    m = with_positions(nodes, "y0", graph_inputs=("x",))
    write(os.path.join(out, "index-fanout-hang.bin"), m.SerializeToString())

    # Offset + length past the end of the data file, and an offset near u64::MAX.
    for label, offset, length in [("external-past-end", "60", "64"),
                                  ("external-offset-overflow", str((1 << 64) - 8), "64")]:
        m = minimal()
        t = find(m, "onnx::MatMul_00")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", "model.onnx_data"), ("offset", offset), ("length", length)]:
            e = t.external_data.add()
            e.key, e.value = k, v
        write(os.path.join(out, f"{label}.bin"), packed(m.SerializeToString(), b"\x00" * 64))


def main():
    fixtures, corpus, regress = sys.argv[1:4]
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(regress, exist_ok=True)
    seeds(fixtures, corpus)
    regressions(regress)


if __name__ == "__main__":
    main()
