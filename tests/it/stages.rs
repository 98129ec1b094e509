//! The partition: prefix, blocks and suffix run one after the other give the full model's logits.

use crate::harness::{fixture, reference, tiny_fixtures, Fixture};
use neuroal_onnx::graph::{Partition, StageKind};
use neuroal_onnx::onnx::OnnxModel;
use neuroal_onnx::pipeline::{inspect, StagedRun};
use neuroal_onnx::progress::Progress;
use neuroal_onnx::runtime::{locate_library, CausalLm, Device, Runtime};

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
        let mut session = run.open(&[], &[]).unwrap();
        run.advance(&mut session, &[], &[], |_, _| Ok(()))
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    }
    assert_eq!(run.stage().kind, StageKind::Suffix);
    let mut suffix = run.open(&[], &[]).unwrap();
    let logits = run
        .run(&mut suffix, 0, &[], &["logits".to_string()])
        .unwrap();
    let staged = logits[0].as_f32().unwrap();
    assert_eq!(staged.len(), full.len(), "{}", fx.name);
    let diff = staged
        .iter()
        .zip(full.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (diff, partition.blocks().count())
}

#[test]
fn stages_in_sequence_reproduce_the_full_model_in_every_convention() {
    let rt = runtime();
    for fx in tiny_fixtures() {
        let (ids, _, _) = reference(&fx);
        let (diff, blocks) = staged_vs_full(&rt, &fx, &ids);
        assert!(diff < 1e-4, "{}: staged logits differ by {diff}", fx.name);
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
