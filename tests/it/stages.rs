//! The partition: prefix, blocks and suffix run one after the other give the full model's logits,
//! and the channel sums a stage model takes equal the host's.

use crate::harness::{fixture, reference, tiny_fixtures, Fixture};
use ndarray::{ArrayD, IxDyn};
use neuroal_onnx::calib::Rng;
use neuroal_onnx::graph::{Partition, StageKind};
use neuroal_onnx::onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto, ValueInfoProto};
use neuroal_onnx::onnx::OnnxModel;
use neuroal_onnx::pipeline::{inspect, StagedRun};
use neuroal_onnx::progress::Progress;
use neuroal_onnx::prune::ActivationStats;
use neuroal_onnx::prune::ChannelSums;
use neuroal_onnx::runtime::{locate_library, Activation, CausalLm, Device, ModelSession, Runtime};

fn runtime() -> Runtime {
    let lib = locate_library(None).expect("libonnxruntime: run `make setup`");
    Runtime::new(&lib, Device::Cpu, 1, &Progress::silent()).expect("ONNX Runtime loads")
}

/// Max |staged − full| logits on `ids`, and the number of block stages.
fn staged_vs_full(rt: &Runtime, fx: &Fixture, ids: &[i64]) -> (f32, usize) {
    let (model, discovery) = inspect(&fx.model).unwrap();
    let partition =
        Partition::new(&model, &discovery).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    // Every block stage holds the nodes of its linears, and reads something an earlier stage made.
    for stage in partition.blocks() {
        let StageKind::Block(b) = stage.kind else {
            unreachable!()
        };
        let names: Vec<&str> = stage
            .nodes
            .iter()
            .map(|&i| partition.nodes[i].name())
            .collect();
        for linear in discovery.block(b) {
            assert!(
                names.contains(&linear.nodes[0].name.as_str()),
                "{}: {} not in block {b}",
                fx.name,
                linear.module
            );
        }
        assert!(
            !stage.inputs.is_empty() && !stage.outputs.is_empty(),
            "{}: block {b} boundary",
            fx.name
        );
    }
    let full = CausalLm::open(rt, &model).unwrap().logits(ids).unwrap();
    let mut run = StagedRun::new(&model, &partition, rt, &[ids.to_vec()]).unwrap();
    while !run.at_suffix() {
        let mut session = run.open(&[], &[], &[]).unwrap();
        run.advance(&mut session, &[], &[], |_, _| Ok(()))
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    }
    assert_eq!(run.stage().kind, StageKind::Suffix);
    let mut suffix = run.open(&[], &[], &[]).unwrap();
    let logits = run
        .run(&mut suffix, 0, &[], &["logits".to_string()])
        .unwrap();
    let staged = logits[0].to_f32().unwrap();
    assert_eq!(staged.len(), full.len(), "{}", fx.name);
    let diff = staged
        .iter()
        .zip(full.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (diff, partition.blocks().count())
}

/// Whether the fixture's `logits` output is float16 (a graph that computes in float16).
fn logits_are_f16(fx: &Fixture) -> bool {
    use neuroal_onnx::onnx::proto::{tensor_proto::DataType, type_proto};
    let model = OnnxModel::load(&fx.model).unwrap();
    let logits = model.graph().output.iter().find(|o| o.name() == "logits");
    matches!(
        logits.and_then(|o| o.r#type.as_ref()?.value.as_ref()),
        Some(type_proto::Value::TensorType(t)) if t.elem_type() == DataType::Float16 as i32
    )
}

#[test]
fn stages_in_sequence_reproduce_the_full_model_in_every_convention() {
    let rt = runtime();
    for fx in tiny_fixtures() {
        let (ids, _, _) = reference(&fx);
        let (diff, blocks) = staged_vs_full(&rt, &fx, &ids);
        // A graph that computes in float16 rounds where ONNX Runtime fuses nodes across a stage
        // boundary in the full model: allow two float16 steps at the largest logit.
        let tolerance = if logits_are_f16(&fx) {
            let (_, logits, _) = reference(&fx);
            let largest = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
            2.0 * half::f16::from_f32(largest).to_f32().max(1.0) * f32::from(half::f16::EPSILON)
        } else {
            1e-4
        };
        assert!(
            diff < tolerance,
            "{}: staged logits differ by {diff} (tolerance {tolerance})",
            fx.name
        );
        assert_eq!(
            blocks as u64,
            fx.manifest["n_blocks"].as_u64().unwrap(),
            "{}: block stages",
            fx.name
        );
    }
}

#[test]
fn stages_in_sequence_reproduce_smollm2() {
    let rt = runtime();
    let fx = fixture("smollm2");
    let ids: Vec<i64> = fx.manifest["checks"]["first_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let (diff, blocks) = staged_vs_full(&rt, &fx, &ids);
    assert_eq!(blocks, 30);
    assert!(diff < 1e-4, "smollm2: staged logits differ by {diff}");
    let _ = OnnxModel::load(&fx.model).unwrap();
}

/// A model of `[rows…, channels]` float32 input `x` and the [`ChannelSums`] nodes for it.
fn channel_sums_model(sums: &ChannelSums, shape: &[usize], opset: i64) -> ModelProto {
    use neuroal_onnx::onnx::proto::tensor_shape_proto::{dimension, Dimension};
    use neuroal_onnx::onnx::proto::{type_proto, TensorShapeProto, TypeProto};
    let (node, initializer) = sums.nodes(opset);
    let typed = |name: &str| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("sums".into()),
            node,
            initializer,
            input: vec![typed(&sums.activation)],
            output: sums
                .outputs()
                .into_iter()
                .map(|name| ValueInfoProto {
                    name: Some(name),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn channel_sums_taken_by_onnx_runtime_equal_the_host_sums_under_either_reduce_sum() {
    let rt = runtime();
    let mut rng = Rng::new(7);
    let mut uniform = || rng.unit();
    // ReduceSum takes its axes as an attribute before opset 13 and as an input from 13 on.
    for (opset, shape) in [(12, [1usize, 37, 24]), (18, [3, 19, 24]), (20, [1, 1, 24])] {
        let sums = ChannelSums {
            activation: "/model/layers.0/mlp/down_proj/input".into(),
            channels: 24,
        };
        let n: usize = shape.iter().product();
        // Wide-ranging values, so that summing in another order would round differently.
        let x: Vec<f32> = (0..n)
            .map(|_| ((uniform() - 0.5) * 2f64.powi((uniform() * 40.0) as i32 - 20)) as f32)
            .collect();
        let proto = channel_sums_model(&sums, &shape, opset);
        let mut session = ModelSession::open(&rt, &proto, "sums").unwrap();
        let input =
            Activation::from_array(ArrayD::from_shape_vec(IxDyn(&shape), x.clone()).unwrap())
                .unwrap();
        let out = session
            .run(&[(sums.activation.as_str(), &input)], &sums.outputs())
            .unwrap_or_else(|e| panic!("opset {opset}: {e}"));
        let mut graph = ActivationStats::new(24, false);
        let shape_out = out[2].as_i64().unwrap();
        assert_eq!(shape_out, shape.map(|d| d as i64), "opset {opset}");
        graph.add_window(out[0].as_f64().unwrap(), out[1].as_f64().unwrap(), n / 24);
        let mut host = ActivationStats::new(24, false);
        host.add(&x);
        assert_eq!(graph.sumsq, host.sumsq, "opset {opset}: Σx²");
        assert_eq!(graph.sum, host.sum, "opset {opset}: Σx");
        assert_eq!(graph.window_sq_means, host.window_sq_means, "opset {opset}");
        assert_eq!((graph.samples, graph.tokens), (1, n / 24));
    }
}

/// A run resumed from a checkpoint before any block gives the
/// uninterrupted run's logits bit for bit, on all its windows, on either one alone, and on the
/// two taken apart and joined again: the evolutionary search resumes offspring there, one window
/// at a time, and joins a candidate's windows into one kept run.
#[test]
fn a_run_resumed_from_a_checkpoint_gives_the_same_logits() {
    let rt = runtime();
    let fx = fixture("tiny/llama");
    let (model, discovery) = inspect(&fx.model).unwrap();
    let partition = Partition::new(&model, &discovery).unwrap();
    let windows: Vec<Vec<i64>> = vec![(1..25).collect(), (30..54).collect()];
    let logits = |run: &mut StagedRun| -> Vec<Vec<f32>> {
        while !run.at_suffix() {
            let mut session = run.open(&[], &[], &[]).unwrap();
            run.advance(&mut session, &[], &[], |_, _| Ok(())).unwrap();
        }
        let mut suffix = run.open(&[], &[], &[]).unwrap();
        (0..run.windows())
            .map(|w| {
                let out = run.run(&mut suffix, w, &[], &["logits".to_string()]);
                out.unwrap()[0].to_f32().unwrap().into_owned()
            })
            .collect()
    };
    let mut whole = StagedRun::new(&model, &partition, &rt, &windows).unwrap();
    let mut checkpoints = Vec::new();
    while !whole.at_suffix() {
        checkpoints.push(whole.checkpoint());
        let mut session = whole.open(&[], &[], &[]).unwrap();
        whole
            .advance(&mut session, &[], &[], |_, _| Ok(()))
            .unwrap();
    }
    let expected = logits(&mut StagedRun::new(&model, &partition, &rt, &windows).unwrap());
    assert_eq!(checkpoints.len(), 1 + partition.blocks().count());
    for (k, checkpoint) in checkpoints.iter().enumerate() {
        let mut both = StagedRun::resume(&model, &partition, &rt, checkpoint);
        assert_eq!(logits(&mut both), expected, "resumed before stage {k}");
        // One window of it alone, and the two windows taken apart and joined again in order.
        let (first, second) = (checkpoint.windows_in(0..1), checkpoint.windows_in(1..2));
        for (part, want, what) in [
            (&first, &expected[..1], "first"),
            (&second, &expected[1..], "second"),
        ] {
            let mut run = StagedRun::resume(&model, &partition, &rt, part);
            assert_eq!(logits(&mut run), want, "{what} window, before stage {k}");
        }
        let mut joined = first.clone();
        joined.append(&second).unwrap();
        let mut run = StagedRun::resume(&model, &partition, &rt, &joined);
        assert_eq!(
            logits(&mut run),
            expected,
            "joined windows, before stage {k}"
        );
    }
    // Runs standing before different stages do not join.
    let mut early = checkpoints[0].windows_in(0..1);
    assert!(early.append(&checkpoints[1].windows_in(1..2)).is_err());
}
