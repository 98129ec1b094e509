//! Writing: the same graph, untouched tensors bit-identical, pruned rows exact, external data
//! aligned, inputs never modified.

use crate::harness::{initializer_bytes, job, run, scratch, snapshot, tiny_fixtures};
use neuroal_onnx::graph::Linear;
use neuroal_onnx::onnx::proto::tensor_proto::DataLocation;
use neuroal_onnx::onnx::{visit_graphs, OnnxModel};
use neuroal_onnx::pipeline::inspect;
use neuroal_onnx::prune::row_prune_count;
use std::collections::HashSet;
use std::path::Path;

/// The graph with every initializer's data removed: what must not change.
fn structure(model: &OnnxModel) -> neuroal_onnx::onnx::proto::ModelProto {
    let mut proto = model.proto.clone();
    neuroal_onnx::onnx::visit_graphs_mut(proto.graph.as_mut().unwrap(), &mut |_, g| {
        for t in &mut g.initializer {
            t.raw_data = None;
            t.float_data.clear();
            t.int32_data.clear();
            t.int64_data.clear();
            t.double_data.clear();
            t.uint64_data.clear();
            t.external_data.clear();
            t.data_location = None;
        }
    });
    proto
}

fn prune(model: &Path, out: &Path, method: &str, sparsity: &str) {
    let flags = [
        "--sparsity",
        sparsity,
        "--prune-method",
        method,
        "--top-up",
        "uniform",
        "--quiet",
    ];
    run(job(model, out, &flags)).ok();
}

#[test]
fn dense_round_trip_keeps_graph_and_every_tensor_bit_identical() {
    for fx in tiny_fixtures() {
        let dir = scratch();
        let out = dir.path().join("out.onnx");
        let before = snapshot(&fx.dir);
        prune(&fx.model, &out, "dense", "0.5");
        assert_eq!(
            snapshot(&fx.dir),
            before,
            "{}: input files changed",
            fx.name
        );
        let input = OnnxModel::load(&fx.model).unwrap();
        let output = OnnxModel::load(&out).unwrap();
        assert_eq!(
            initializer_bytes(&output),
            initializer_bytes(&input),
            "{}: tensors",
            fx.name
        );
        assert_eq!(
            structure(&output),
            structure(&input),
            "{}: graph, I/O, opsets",
            fx.name
        );
    }
}

#[test]
fn external_data_is_one_aligned_file_next_to_the_output() {
    let fx = tiny_fixtures()
        .into_iter()
        .find(|f| f.name == "llama")
        .unwrap();
    let dir = scratch();
    let out = dir.path().join("pruned.onnx");
    prune(&fx.model, &out, "magnitude", "0.5");
    let files: HashSet<String> = snapshot(dir.path()).into_keys().collect();
    let want: HashSet<String> = [
        "pruned.onnx",
        "pruned.onnx.data",
        "pruned.report.json",
        "pruned.report.html",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(files, want, "no temporary files are left behind");
    let model = OnnxModel::load(&out).unwrap();
    let mut external = 0;
    visit_graphs(model.graph(), &mut |_, g, _| {
        for t in &g.initializer {
            if t.data_location() == DataLocation::External {
                external += 1;
                let get = |k: &str| {
                    t.external_data
                        .iter()
                        .find(|e| e.key() == k)
                        .map(|e| e.value().to_string())
                };
                assert_eq!(get("location").as_deref(), Some("pruned.onnx.data"));
                let offset: u64 = get("offset").unwrap().parse().unwrap();
                assert_eq!(offset % 4096, 0, "{} at offset {offset}", t.name());
            }
        }
    })
    .unwrap();
    assert!(
        external >= 21,
        "every linear weight is large enough to go external"
    );
}

/// Checks one pruned linear against the original: exact per-row counts, the smallest magnitudes
/// pruned, survivors unchanged.
fn check_linear(name: &str, linear: &Linear, before: &[f32], after: &[f32], sparsity: f64) {
    let cols = linear.in_features;
    let want = row_prune_count(cols, sparsity);
    for (r, (b, a)) in before.chunks(cols).zip(after.chunks(cols)).enumerate() {
        // Weights that were already zero rank lowest and count towards the row's budget.
        let zeros_before = b.iter().filter(|v| **v == 0.0).count();
        let zeros_after = a.iter().filter(|v| **v == 0.0).count();
        assert_eq!(
            zeros_after,
            want.max(zeros_before),
            "{name} {} row {r}: zeros",
            linear.module
        );
        let max_pruned = (0..cols)
            .filter(|&c| a[c] == 0.0)
            .map(|c| b[c].abs())
            .fold(0.0f32, f32::max);
        for c in 0..cols {
            if a[c] != 0.0 {
                assert_eq!(
                    a[c].to_bits(),
                    b[c].to_bits(),
                    "{name} row {r} col {c}: kept weight changed"
                );
                assert!(
                    b[c].abs() >= max_pruned,
                    "{name} row {r}: kept |w| below a pruned one"
                );
            }
        }
    }
}

#[test]
fn magnitude_prunes_exact_per_row_counts_in_every_convention() {
    for (fx, sparsity) in tiny_fixtures()
        .into_iter()
        .zip([0.3, 0.5, 0.7, 0.9, 0.6, 0.75, 0.55, 0.45].iter().cycle())
    {
        let dir = scratch();
        let out = dir.path().join("out.onnx");
        prune(&fx.model, &out, "magnitude", &sparsity.to_string());
        let (input, discovery) = inspect(&fx.model).unwrap();
        let (output, discovery_out) = inspect(&out).unwrap();
        assert_eq!(
            discovery_out.linears.len(),
            discovery.linears.len(),
            "{}: discovery after writing",
            fx.name
        );
        for linear in &discovery.linears {
            let before = linear.read_out_in(&input).unwrap();
            let after = linear.read_out_in(&output).unwrap();
            check_linear(&fx.name, linear, &before, &after, *sparsity);
        }
        // Everything that is not a prunable weight is bit-identical.
        let weights: HashSet<(String, String)> = discovery
            .linears
            .iter()
            .map(|l| (l.weight.graph.clone(), l.weight.name.clone()))
            .collect();
        let a = initializer_bytes(&input);
        let b = initializer_bytes(&output);
        assert_eq!(a.len(), b.len(), "{}: same initializers", fx.name);
        for (key, bytes) in &a {
            if !weights.contains(key) {
                assert_eq!(Some(bytes), b.get(key), "{}: {key:?} changed", fx.name);
            }
        }
    }
}

#[test]
fn same_input_and_flags_give_byte_identical_output() {
    let fx = tiny_fixtures()
        .into_iter()
        .find(|f| f.name == "genai")
        .unwrap();
    let dir = scratch();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    prune(&fx.model, &a, "magnitude", "0.6");
    prune(&fx.model, &b, "magnitude", "0.6");
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(
        read(&dir.path().join("a.onnx.data")),
        read(&dir.path().join("b.onnx.data"))
    );
    // The model files differ only in the data file's name.
    let model_a = String::from_utf8_lossy(&read(&a)).replace("a.onnx.data", "X");
    let model_b = String::from_utf8_lossy(&read(&b)).replace("b.onnx.data", "X");
    assert_eq!(model_a, model_b);
}

#[test]
fn outputs_over_2_gib_are_written_and_load_back() {
    use neuroal_onnx::onnx::proto::tensor_proto::DataType;
    use neuroal_onnx::onnx::proto::{ModelProto, StringStringEntryProto, TensorProto};
    use neuroal_onnx::progress::Progress;
    use neuroal_onnx::runtime::{locate_library, CausalLm, Device, Runtime};
    use prost::Message;

    let fx = crate::harness::fixture("tiny/llama");
    let dir = scratch();
    let model_path = crate::harness::copy_fixture(&fx, dir.path());
    // A 2.4 GB initializer in a sparse file, placed first so that every weight written after it
    // sits past the 2 GiB mark of the output's data file.
    const BIG: u64 = 600_000_000;
    std::fs::File::create(dir.path().join("big.bin"))
        .unwrap()
        .set_len(BIG * 4)
        .unwrap();
    let mut proto = ModelProto::decode(std::fs::read(&model_path).unwrap().as_slice()).unwrap();
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let big = TensorProto {
        name: Some("big.unused".into()),
        dims: vec![BIG as i64],
        data_type: Some(DataType::Float as i32),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", "big.bin".into()),
            entry("offset", "0".into()),
            entry("length", (BIG * 4).to_string()),
        ],
        ..Default::default()
    };
    proto.graph.as_mut().unwrap().initializer.insert(0, big);
    std::fs::write(&model_path, proto.encode_to_vec()).unwrap();

    let out = dir.path().join("out.onnx");
    prune(&model_path, &out, "dense", "0.5");
    let data_len = std::fs::metadata(dir.path().join("out.onnx.data"))
        .unwrap()
        .len();
    assert!(data_len > (BIG * 4), "data file of {data_len} bytes");
    let input = OnnxModel::load(&model_path).unwrap();
    let output = OnnxModel::load(&out).unwrap();
    let (_, discovery) = inspect(&out).unwrap();
    for linear in &discovery.linears {
        assert_eq!(
            linear.read_out_in(&output).unwrap(),
            linear.read_out_in(&input).unwrap()
        );
    }
    let big = output.initializer(&neuroal_onnx::onnx::TensorKey {
        graph: String::new(),
        name: "big.unused".into(),
    });
    let bytes = output.tensor_bytes("", big.unwrap()).unwrap();
    assert_eq!(bytes.len() as u64, BIG * 4);
    // The model still runs, and gives the input model's logits.
    let lib = locate_library(None).unwrap();
    let rt = Runtime::new(&lib, Device::Cpu, 1, &Progress::silent()).unwrap();
    let ids: Vec<i64> = (0..8).collect();
    let a = CausalLm::open(&rt, &input).unwrap().logits(&ids).unwrap();
    let b = CausalLm::open(&rt, &output).unwrap().logits(&ids).unwrap();
    assert_eq!(a, b);
}

#[test]
fn replacements_streamed_while_pruning_land_in_place_inline_or_external() {
    use neuroal_onnx::onnx::{ModelWriter, SaveOptions};
    let fx = crate::harness::fixture("tiny/llama");
    let (model, discovery) = inspect(&fx.model).unwrap();
    let dense = initializer_bytes(&model);
    let (first, second) = (&discovery.linears[0], &discovery.linears[1]);
    let zeros = vec![0u8; first.numel() * first.dtype.size()];
    let ones: Vec<u8> = (0..second.numel() * second.dtype.size())
        .map(|i| i as u8)
        .collect();
    let key = |l: &Linear| (l.weight.graph.clone(), l.weight.name.clone());
    let dir = scratch();

    // Under the threshold a replacement stays in the model file; over it, it goes to the data file.
    for (name, threshold, location) in [
        ("inline", usize::MAX, DataLocation::Default),
        ("external", 1, DataLocation::External),
    ] {
        let out = dir.path().join(format!("{name}.onnx"));
        let options = SaveOptions {
            external_threshold: threshold,
        };
        let mut writer = ModelWriter::create(&model, &out, &options).unwrap();
        writer.put(&first.weight, &zeros).unwrap();
        writer.put(&second.weight, &ones).unwrap();
        let err = writer.put(&first.weight, &zeros).unwrap_err().to_string();
        assert!(err.contains("replaced twice"), "{err}");
        writer.finish().unwrap();

        let written = OnnxModel::load(&out).unwrap();
        let mut expected = dense.clone();
        expected.insert(key(first), zeros.clone());
        expected.insert(key(second), ones.clone());
        assert!(
            initializer_bytes(&written) == expected,
            "{name}: tensor bytes"
        );
        let tensor = written.initializer(&first.weight).unwrap();
        assert_eq!(tensor.data_location(), location, "{name}");
    }

    // A replacement for a tensor the model does not have is refused, and nothing is left.
    let out = dir.path().join("unknown.onnx");
    let mut writer = ModelWriter::create(&model, &out, &SaveOptions::default()).unwrap();
    let mut stranger = first.weight.clone();
    stranger.name.push_str(".nowhere");
    writer.put(&stranger, &zeros).unwrap();
    let err = writer.finish().unwrap_err().to_string();
    assert!(err.contains("names no initializer"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("unknown"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_input_reordering_that_cannot_be_placed_writes_nothing() {
    use neuroal_onnx::onnx::{ModelWriter, NodeAt, SaveOptions};
    let dir = scratch();
    let fx = crate::harness::fixture("tiny/llama");
    let (model, discovery) = inspect(&fx.model).unwrap();
    let linear = &discovery.linears[0];
    let order: Vec<u32> = (0..linear.in_features as u32).rev().collect();
    let attempt = |model: &OnnxModel, nodes: &[NodeAt], out: &str| -> String {
        let out = dir.path().join(out);
        let mut writer = ModelWriter::create(model, &out, &SaveOptions::default()).unwrap();
        writer.reorder_input(&linear.weight, nodes, &order).unwrap();
        let err = writer.finish().unwrap_err().to_string();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(out.file_stem().unwrap().to_str().unwrap()))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        err
    };
    // A node the graph does not hold (another first input).
    let mut stray = linear.nodes[0].at();
    stray.input.push_str(".elsewhere");
    let err = attempt(&model, &[stray], "stray.onnx");
    for needle in [linear.weight.name.as_str(), "0 nodes", ".elsewhere"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // A name the model already uses: its own value called `W/input_order`.
    let taken = format!("{}/input_order", linear.weight.name);
    let edited = crate::harness::edited_llama(dir.path(), |proto| {
        let graph = proto.graph.as_mut().unwrap();
        let node = graph
            .node
            .iter_mut()
            .find(|n| n.op_type() == "Shape")
            .unwrap();
        node.output[0] = taken.clone();
    });
    let edited = OnnxModel::load(&edited).unwrap();
    let err = attempt(&edited, &[linear.nodes[0].at()], "taken.onnx");
    assert!(
        err.contains(&format!("already has a value named '{taken}'")),
        "{err}"
    );
}
