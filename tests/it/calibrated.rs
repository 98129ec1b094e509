//! Calibrated pruning (Wanda, SparseGPT, multiflow): masks equal an independent computation,
//! pruning is sequential, runs are deterministic, bad calibration input is refused.

use crate::harness::{fixture, job, prune_ok, run, run_command, scratch, snapshot, Fixture};
use neuroal_onnx::calib::{sample_windows, Rng};
use neuroal_onnx::graph::Linear;
use neuroal_onnx::onnx::proto::{ModelProto, ValueInfoProto};
use neuroal_onnx::onnx::{ModelWriter, OnnxModel, SaveOptions};
use neuroal_onnx::pipeline::inspect;
use neuroal_onnx::progress::Progress;
use neuroal_onnx::prune::row_prune_count;
use neuroal_onnx::runtime::{locate_library, Device, GraphFeeds, ModelSession, Runtime};
use std::path::{Path, PathBuf};
use std::process::Command;

const SEQLEN: usize = 32;
const NSAMPLES: usize = 6;
const SEED: u64 = 5;

/// Three token-id documents written as a `.json` calibration file; returns the file and the docs.
fn token_documents(dir: &Path) -> (PathBuf, Vec<Vec<u32>>) {
    let mut rng = Rng::new(99);
    let docs: Vec<Vec<u32>> = (0..3)
        .map(|d| (0..80 + 10 * d).map(|_| rng.below(256) as u32).collect())
        .collect();
    let path = dir.join("calib.json");
    std::fs::write(&path, serde_json::to_string(&docs).unwrap()).unwrap();
    (path, docs)
}

/// The full model (all data inline) with `names` added as outputs, run on every window; returns
/// per name the Σ x² per channel over all windows and tokens (f64).
/// Runs `model` whole (weights inlined) on each of `windows`, with `names` as its outputs, and
/// hands every output (window, name index, values, last dimension) to `visit`.
fn run_whole(
    model: &OnnxModel,
    names: &[String],
    windows: &[Vec<u32>],
    mut visit: impl FnMut(usize, &[f32], usize),
) {
    let lib = locate_library(None).unwrap();
    let rt = Runtime::new(&lib, Device::Cpu, 1, &Progress::silent()).unwrap();
    let mut proto: ModelProto = model.proto.clone();
    let graph = proto.graph.as_mut().unwrap();
    for t in &mut graph.initializer {
        let bytes = model.tensor_bytes("", t).unwrap().to_vec();
        t.external_data.clear();
        t.data_location = None;
        t.raw_data = Some(bytes.into());
    }
    for n in names {
        if !graph.output.iter().any(|o| o.name.as_deref() == Some(n)) {
            graph.output.push(ValueInfoProto {
                name: Some(n.clone()),
                ..Default::default()
            });
        }
    }
    let inputs: Vec<ValueInfoProto> = graph.input.clone();
    let mut session = ModelSession::open(&rt, &proto, "full model").unwrap();
    let feeds = GraphFeeds::new(model, &inputs).unwrap();
    for w in windows {
        let ids: Vec<i64> = w.iter().map(|&t| t as i64).collect();
        let values = feeds.values(&ids).unwrap();
        let refs: Vec<(&str, &_)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let outs = session.run(&refs, names).unwrap();
        for (k, x) in outs.iter().enumerate() {
            visit(k, &x.to_f32().unwrap(), *x.shape().last().unwrap());
        }
    }
}

/// Σ x² per channel of each of `names` over every token of `windows`.
fn channel_sumsq(model: &OnnxModel, names: &[String], windows: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let mut sums: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    run_whole(model, names, windows, |k, x, c| {
        sums[k].resize(c, 0.0);
        for row in x.chunks_exact(c) {
            for (s, v) in sums[k].iter_mut().zip(row) {
                *s += (*v as f64) * (*v as f64);
            }
        }
    });
    sums
}

/// The logits of `model` on every token of `windows`, one after the other.
fn logits_on(model: &Path, windows: &[Vec<u32>]) -> Vec<f32> {
    let model = OnnxModel::load(model).unwrap();
    let mut logits = Vec::new();
    run_whole(&model, &["logits".to_string()], windows, |_, x, _| {
        logits.extend_from_slice(x)
    });
    logits
}

/// The mask that prunes the `floor(cols · sparsity)` lowest `scores` of every row, by a stable
/// sort (true = pruned).
fn lowest_per_row(scores: &[f64], cols: usize, sparsity: f64) -> Vec<bool> {
    let k = row_prune_count(cols, sparsity);
    let mut mask = vec![false; scores.len()];
    for (r, score) in scores.chunks_exact(cols).enumerate() {
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|a, b| score[*a].partial_cmp(&score[*b]).unwrap());
        for &c in &order[..k] {
            mask[r * cols + c] = true;
        }
    }
    mask
}

/// The Wanda mask of a linear: |W|·‖x_j‖ (true = pruned).
fn expected_wanda_mask(w: &[f32], cols: usize, sumsq: &[f64], sparsity: f64) -> Vec<bool> {
    let scores: Vec<f64> = w
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter()
                .zip(sumsq)
                .map(|(w, s)| w.abs() as f64 * s.sqrt())
        })
        .collect();
    lowest_per_row(&scores, cols, sparsity)
}

/// The RIA mask of a linear: |W_ij| over its row's and over its column's absolute sum, times
/// ‖x_j‖^0.5 (true = pruned).
fn expected_ria_mask(w: &[f32], cols: usize, sumsq: &[f64], sparsity: f64) -> Vec<bool> {
    let abs: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
    let rows = abs.len() / cols;
    let row_sum = |r: usize| abs[r * cols..(r + 1) * cols].iter().sum::<f64>();
    let col_sum = |c: usize| (0..rows).map(|r| abs[r * cols + c]).sum::<f64>();
    let scores: Vec<f64> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            (abs[i] / row_sum(r) + abs[i] / col_sum(c)) * sumsq[c].sqrt().sqrt()
        })
        .collect();
    lowest_per_row(&scores, cols, sparsity)
}

fn input_of(l: &Linear) -> String {
    l.nodes[0].input.clone()
}

/// Prunes `fx` with `method` and uniform allocation on the token documents `calib`.
fn prune_on(fx: &Fixture, dir: &Path, calib: &Path, method: &str, sparsity: &str) -> PathBuf {
    let out = dir.join(format!("{method}.onnx"));
    let flags = [
        "--sparsity",
        sparsity,
        "--prune-method",
        method,
        "--top-up",
        "uniform",
        "--calib",
        calib.to_str().unwrap(),
        "--nsamples",
        "6",
        "--seqlen",
        "32",
        "--seed",
        "5",
        "--quiet",
    ];
    run(job(&fx.model, &out, &flags)).ok();
    out
}

#[test]
fn wanda_masks_equal_an_independent_computation_and_are_sequential() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let (calib, docs) = token_documents(dir.path());
    let out = prune_on(&fx, dir.path(), &calib, "wanda", "0.5");
    let windows = sample_windows(&docs, NSAMPLES, SEQLEN, &[], SEED).unwrap();
    let (input, discovery) = inspect(&fx.model).unwrap();
    let output = OnnxModel::load(&out).unwrap();
    let zeros = |l: &Linear| -> Vec<bool> {
        l.read_out_in(&output)
            .unwrap()
            .iter()
            .map(|v| *v == 0.0)
            .collect()
    };

    // Block 0: every linear's input comes from the dense block 0 on the model's embeddings.
    let block0: Vec<&Linear> = discovery.block(0).collect();
    let names: Vec<String> = block0.iter().map(|l| input_of(l)).collect();
    let sums = channel_sumsq(&input, &names, &windows);
    for (l, s) in block0.iter().zip(&sums) {
        let w = l.read_out_in(&input).unwrap();
        assert_eq!(
            zeros(l),
            expected_wanda_mask(&w, l.in_features, s, 0.5),
            "block 0 {}",
            l.module
        );
    }

    // Block 1's q/k/v read the output of block 0: pruned block 0, not the dense one.
    let qkv: Vec<&Linear> = discovery.block(1).take(3).collect();
    let names: Vec<String> = qkv.iter().map(|l| input_of(l)).collect();
    let after_pruned_block0 = channel_sumsq(&output, &names, &windows);
    let after_dense_block0 = channel_sumsq(&input, &names, &windows);
    assert_ne!(
        after_pruned_block0[0], after_dense_block0[0],
        "block 1's statistics depend on block 0's pruning"
    );
    let mut differs = false;
    for (k, l) in qkv.iter().enumerate() {
        let w = l.read_out_in(&input).unwrap();
        let sequential = expected_wanda_mask(&w, l.in_features, &after_pruned_block0[k], 0.5);
        assert_eq!(
            zeros(l),
            sequential,
            "block 1 {}: pruned outputs are fed forward",
            l.module
        );
        differs |=
            sequential != expected_wanda_mask(&w, l.in_features, &after_dense_block0[k], 0.5);
    }
    assert!(
        differs,
        "the dense-input masks of block 1 would differ somewhere"
    );
}

/// The activation sums a pass takes on the host (the CPU default) and in the stage models (the
/// CUDA default, `NEUROAL_ONNX_SUMS=model`) are the same sums in the same order: the same bytes.
#[test]
fn ria_masks_equal_an_independent_computation() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let (calib, docs) = token_documents(dir.path());
    let out = prune_on(&fx, dir.path(), &calib, "ria", "0.5");
    let windows = sample_windows(&docs, NSAMPLES, SEQLEN, &[], SEED).unwrap();
    let (input, discovery) = inspect(&fx.model).unwrap();
    let output = OnnxModel::load(&out).unwrap();
    // Block 0 reads the dense model's embeddings.
    let block0: Vec<&Linear> = discovery.block(0).collect();
    let names: Vec<String> = block0.iter().map(|l| input_of(l)).collect();
    let sums = channel_sumsq(&input, &names, &windows);
    for (l, s) in block0.iter().zip(&sums) {
        let w = l.read_out_in(&input).unwrap();
        let zeros: Vec<bool> = l
            .read_out_in(&output)
            .unwrap()
            .iter()
            .map(|v| *v == 0.0)
            .collect();
        let ria = expected_ria_mask(&w, l.in_features, s, 0.5);
        assert_eq!(zeros, ria, "block 0 {}", l.module);
        assert_ne!(
            ria,
            expected_wanda_mask(&w, l.in_features, s, 0.5),
            "{}: RIA is not Wanda",
            l.module
        );
    }
}

#[test]
fn every_calibrated_method_prunes_every_convention_deterministically_wherever_the_sums_are_taken() {
    let dir = scratch();
    let (calib, _) = token_documents(dir.path());
    for (name, method, top_up) in [
        ("llama-merged", "sparsegpt", "uniform"),
        ("dynamo", "wanda", "uniform"),
        ("genai", "multiflow", "uniform"),
        ("opt", "sparsegpt", "uniform"),
        ("gpt2", "wanda", "uniform"),
        ("phi", "multiflow", "uniform"),
        ("llama", "wanda", "dsnot"),
        ("llama", "wanda", "neuroal"),
        ("llama", "sparsegpt", "neuroal"),
        ("dynamo", "ria", "uniform"),
        ("llama", "ria", "neuroal"),
    ] {
        let fx = fixture(&format!("tiny/{name}"));
        let outs: Vec<(PathBuf, serde_json::Value)> = ["host", "model"]
            .iter()
            .map(|site| {
                let out = dir.path().join(format!("{name}-{method}-{top_up}-{site}.onnx"));
                let flags = format!(
                    "--sparsity 0.6 --prune-method {method} --top-up {top_up} --calib {} --nsamples 4 --seqlen 32 --quiet",
                    calib.display()
                );
                let flags: Vec<&str> = flags.split_whitespace().collect();
                let mut command = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"));
                command
                    .args(job(&fx.model, &out, &flags))
                    .env("NEUROAL_ONNX_SUMS", site);
                run_command(&mut command).ok();
                let report: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(out.with_extension("report.json")).unwrap(),
                )
                .unwrap();
                assert_eq!(report["calibration"]["activation_sums"], *site);
                (out, report)
            })
            .collect();
        let data = |p: &PathBuf| std::fs::read(p.with_extension("onnx.data")).unwrap();
        assert!(
            data(&outs[0].0) == data(&outs[1].0),
            "{name} {method} {top_up}: same seed, same bytes, sums on the host or in the model"
        );
        let report = &outs[0].1;
        let measured = report["sparsity"]["measured"].as_f64().unwrap();
        assert!(
            (measured - 0.6).abs() < 0.01,
            "{name} {method} {top_up}: measured sparsity {measured}"
        );
        assert_eq!(report["calibration"]["source"], "token_ids");
        assert_eq!(report["calibration"]["windows"], 4);
    }
    let out = dir.path().join("bad-site.onnx");
    let flags = format!(
        "--sparsity 0.5 --prune-method wanda --top-up uniform --calib {}",
        calib.display()
    );
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"));
    command
        .args(job(&fixture("tiny/llama").model, &out, &flags))
        .env("NEUROAL_ONNX_SUMS", "gpu");
    let r = run_command(&mut command);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("NEUROAL_ONNX_SUMS"), "{}", r.stderr);
}

#[test]
fn hidden_states_beyond_the_memory_budget_go_to_disk_and_change_no_output_byte() {
    let dir = scratch();
    let (calib, _) = token_documents(dir.path());
    // Each passes its hidden states through a different pass: NeuroAL's search jobs side by
    // side and the final pass, OWL's and DLP's dense pass, fp16 hidden states, a merged decoder.
    for (name, method, top_up) in [
        ("llama", "wanda", "neuroal --search-jobs 2"),
        ("llama-fp16", "sparsegpt", "owl"),
        ("gemma3", "wanda", "dlp"),
        ("llama-merged", "multiflow", "uniform"),
    ] {
        let fx = fixture(&format!("tiny/{name}"));
        // 8 GiB keeps every hidden state in memory; a quarter of 64 KiB holds two windows of
        // these models' at most, so the rest go to disk.
        let [(roomy_dir, roomy), (tight_dir, tight)] = ["8G", "64K"].map(|budget| {
            let sub = dir.path().join(format!("{name}-{budget}"));
            std::fs::create_dir(&sub).unwrap();
            let flags = format!(
                "--sparsity 0.6 --prune-method {method} --top-up {top_up} --calib {} --nsamples 4 --seqlen 32 --memory-budget {budget} --quiet",
                calib.display()
            );
            let out = sub.join("out.onnx");
            let flags: Vec<&str> = flags.split_whitespace().collect();
            let stdout = run(job(&fx.model, &out, &flags)).ok().stdout;
            let report: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.with_extension("report.json")).unwrap(),
            )
            .unwrap();
            // The summary sets the peak against the budget, and says what went to disk.
            let peak = report["peak_rss_mib"].as_f64().unwrap();
            let within = peak <= report["memory_budget"]["mib"].as_f64().unwrap();
            let line = stdout.lines().find(|l| l.starts_with("memory: peak")).unwrap();
            assert_eq!(line.contains("within the --memory-budget"), within, "{line}");
            assert_eq!(line.contains("over the --memory-budget"), !within, "{line}");
            assert_eq!(line.contains("hidden states went to disk"), budget == "64K", "{line}");
            (sub, report)
        });
        let what = format!("{name} {method} {top_up}");
        assert_eq!(roomy["calibration"]["spilled_mib"], 0.0, "{what}");
        let spilled = tight["calibration"]["spilled_mib"].as_f64().unwrap();
        assert!(spilled > 0.0, "{what}: nothing was spilled under 64K");
        let data = |d: &PathBuf| std::fs::read(d.join("out.onnx.data")).unwrap();
        assert!(
            data(&roomy_dir) == data(&tight_dir),
            "{what}: spilling changed the pruned weights"
        );
        assert_eq!(roomy["sparsity"], tight["sparsity"], "{what}");
        assert_eq!(
            snapshot(&tight_dir).into_keys().collect::<Vec<_>>(),
            [
                "out.onnx",
                "out.onnx.data",
                "out.report.html",
                "out.report.json"
            ],
            "{what}: the spill file is left behind"
        );
        crate::harness::assert_loads_from_another_folder(&tight_dir.join("out.onnx"));
    }
}

#[test]
fn n_of_m_sparsity_prunes_two_of_every_four_inputs() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let (calib, _) = token_documents(dir.path());
    for method in ["wanda", "sparsegpt", "magnitude"] {
        let out = dir.path().join(format!("{method}.onnx"));
        let mut flags = vec![
            "--sparsity",
            "0.5",
            "--prune-method",
            method,
            "--top-up",
            "uniform",
            "--nm",
            "2:4",
            "--quiet",
        ];
        if method != "magnitude" {
            flags.extend([
                "--calib",
                calib.to_str().unwrap(),
                "--nsamples",
                "4",
                "--seqlen",
                "32",
            ]);
        }
        run(job(&fx.model, &out, &flags)).ok();
        let (model, discovery) = inspect(&out).unwrap();
        for l in &discovery.linears {
            let w = l.read_out_in(&model).unwrap();
            for group in w.chunks_exact(4) {
                assert!(
                    group.iter().filter(|v| **v == 0.0).count() >= 2,
                    "{method} {}: {group:?}",
                    l.module
                );
            }
        }
    }
}

/// The int64 values of initializer `name` of `model`'s main graph.
fn int64_initializer(model: &OnnxModel, name: &str) -> Vec<i64> {
    let t = model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer '{name}'"));
    let bytes = model.tensor_bytes("", t).unwrap().to_vec();
    bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The flags of a RIA 2:4 job calibrated on `calib`.
fn ria_two_of_four(calib: &Path) -> String {
    format!(
        "--sparsity 0.5 --prune-method ria --top-up uniform --nm 2:4 --calib {} --nsamples 4 --seqlen {SEQLEN} --quiet",
        calib.display()
    )
}

/// `flags` split on whitespace.
fn split(flags: &str) -> Vec<&str> {
    flags.split_whitespace().collect()
}

#[test]
fn ria_n_of_m_stores_every_matrix_two_of_four_with_its_inputs_reordered_to_match() {
    let dir = scratch();
    let (calib, docs) = token_documents(dir.path());
    let windows = sample_windows(&docs, 2, SEQLEN, &[], SEED).unwrap();
    // MatMul on [in, out] weights, Conv1D-style MatMuls on 2-D inputs, a merged decoder's
    // branches, the genai builder's packed q/k/v with grouped-query attention.
    for name in [
        "tiny/llama",
        "tiny/gpt2",
        "tiny/llama-merged",
        "tiny/genai-gqa",
    ] {
        let fx = fixture(name);
        let out = dir.path().join(format!("{}.onnx", fx.name));
        let summary = run(job(&fx.model, &out, &split(&ria_two_of_four(&calib))))
            .ok()
            .stdout;
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.with_extension("report.json")).unwrap(),
        )
        .unwrap();
        crate::harness::assert_loads_from_another_folder(&out);
        let (model, discovery) = inspect(&out).unwrap();
        let input = OnnxModel::load(&fx.model).unwrap();
        let per_matrix = report["sparsity"]["per_matrix"].as_array().unwrap();
        assert_eq!(per_matrix.len(), discovery.linears.len(), "{name}");
        let (mut reordered, mut stored_order_breaks_the_pattern) = (0, false);
        let mut unpermuted = Vec::new();
        for (l, m) in discovery.linears.iter().zip(per_matrix) {
            assert_eq!(m["weight"], l.weight.name.as_str());
            let w = l.read_out_in(&model).unwrap();
            // Stored, every 4 consecutive inputs of a row hold exactly 2 zeros (the tiny
            // fixtures' weights have none of their own).
            for group in w.chunks_exact(4) {
                assert_eq!(
                    group.iter().filter(|v| **v == 0.0).count(),
                    2,
                    "{name} {}",
                    l.module
                );
            }
            let cols = l.in_features;
            let order: Vec<usize> = match m["input_order"].as_str() {
                Some(init) => {
                    reordered += 1;
                    int64_initializer(&model, init)
                        .iter()
                        .map(|&i| i as usize)
                        .collect()
                }
                None => (0..cols).collect(),
            };
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..cols).collect::<Vec<_>>(),
                "{name}: not a permutation"
            );
            // Back in the input's channel order: stored column q is input channel order[q].
            let mut original = vec![0f32; w.len()];
            for (to, from) in original.chunks_mut(cols).zip(w.chunks(cols)) {
                for (q, &j) in order.iter().enumerate() {
                    to[j] = from[q];
                }
            }
            // Put back, every weight is the input's own weight at its place, or zero.
            let dense = l.read_out_in(&input).unwrap();
            assert!(
                original
                    .iter()
                    .zip(&dense)
                    .all(|(o, d)| *o == 0.0 || o.to_bits() == d.to_bits()),
                "{name} {}: a kept weight is not the input's weight at its place",
                l.module
            );
            stored_order_breaks_the_pattern |= original
                .chunks_exact(4)
                .any(|g| g.iter().filter(|v| **v == 0.0).count() != 2);
            unpermuted.push((l.weight.clone(), l.encode_out_in(&original)));
        }
        assert!(reordered > 0, "{name}: no matrix was reordered");
        let line = format!(
            "inputs reordered: {reordered} of {} linears",
            discovery.linears.len()
        );
        assert!(summary.contains(&line), "{name}: {summary}");
        let note = report["deployment"]["note"].as_str().unwrap();
        assert!(
            note.contains(&format!(
                "{reordered} of the matrices are stored with their inputs reordered"
            )),
            "{name}: {note}"
        );
        assert!(
            stored_order_breaks_the_pattern,
            "{name}: every order kept the input's groups"
        );
        // The same matrices in the input's own order and graph, with no Gather, compute the
        // same logits: each Gather feeds its linear the channels its stored columns expect.
        let reference = dir.path().join(format!("{}-reference.onnx", fx.name));
        let mut writer = ModelWriter::create(&input, &reference, &SaveOptions::default()).unwrap();
        for (key, bytes) in &unpermuted {
            writer.put(key, bytes).unwrap();
        }
        writer.finish().unwrap();
        let (got, want) = (logits_on(&out, &windows), logits_on(&reference, &windows));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "{name}: logits differ by {worst} (scale {scale})"
        );
    }
}

#[test]
fn ria_n_of_m_is_refused_before_opset_11() {
    let dir = scratch();
    let model = crate::harness::edited_llama(dir.path(), |proto| {
        for o in &mut proto.opset_import {
            if matches!(o.domain.as_deref(), None | Some("")) {
                o.version = Some(10);
            }
        }
    });
    let (calib, _) = token_documents(dir.path());
    let out = dir.path().join("out.onnx");
    let r = run(job(&model, &out, &split(&ria_two_of_four(&calib))));
    assert_eq!(r.code, 1, "{}", r.stderr);
    for needle in ["opset 10", "Gather", "--prune-method wanda"] {
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
    }
    assert!(!out.exists());
}

#[test]
fn reconstruction_keeps_every_row_count_and_brings_the_outputs_closer_to_the_dense_model() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let (calib, docs) = token_documents(dir.path());
    let calib = calib.to_str().unwrap();
    let windows = sample_windows(&docs, NSAMPLES, SEQLEN, &[], SEED).unwrap();
    let dense = logits_on(&fx.model, &windows);
    let distance = |logits: &[f32]| -> f64 {
        logits
            .iter()
            .zip(&dense)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum()
    };
    for flags in [
        "--prune-method wanda --top-up uniform --sparsity 0.6",
        "--prune-method magnitude --top-up owl --sparsity 0.6",
        "--prune-method multiflow --top-up neuroal --sparsity 0.6",
        "--prune-method wanda --top-up uniform --nm 2:4 --sparsity 0.5",
    ] {
        let common = format!(
            "{flags} --calib {calib} --nsamples {NSAMPLES} --seqlen {SEQLEN} --seed {SEED} --quiet"
        );
        let (plain, rebuilt) = (
            dir.path().join("plain.onnx"),
            dir.path().join("rebuilt.onnx"),
        );
        prune_ok(&fx.model, &plain, &common);
        let report = prune_ok(&fx.model, &rebuilt, &format!("{common} --reconstruct"));
        assert_eq!(report["method"]["reconstruct"], true, "{flags}");
        crate::harness::assert_loads_from_another_folder(&rebuilt);
        let ((pm, pd), (rm, rd)) = (inspect(&plain).unwrap(), inspect(&rebuilt).unwrap());
        // The plan is the same, so every row keeps as many weights. The first block reads the
        // same inputs either way and keeps the same mask; later blocks read the outputs of
        // re-fitted blocks, so their statistics, and masks, may differ.
        let mut moved = 0;
        for (lp, lr) in pd.linears.iter().zip(&rd.linears) {
            let (a, b) = (lp.read_out_in(&pm).unwrap(), lr.read_out_in(&rm).unwrap());
            let cols = lp.in_features;
            for (r, (x, y)) in a.chunks_exact(cols).zip(b.chunks_exact(cols)).enumerate() {
                let zeros = |row: &[f32]| row.iter().filter(|v| **v == 0.0).count();
                assert_eq!(
                    zeros(x),
                    zeros(y),
                    "{flags}: block {} {} row {r}",
                    lp.block,
                    lp.module
                );
                if lp.block == 0 {
                    for (i, (p, q)) in x.iter().zip(y).enumerate() {
                        assert_eq!(
                            *p == 0.0,
                            *q == 0.0,
                            "{flags}: block 0 {} [{r}, {i}]",
                            lp.module
                        );
                    }
                }
            }
            moved += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        }
        assert!(moved > 0, "{flags}: --reconstruct changed no weight");
        let (d_plain, d_rebuilt) = (
            distance(&logits_on(&plain, &windows)),
            distance(&logits_on(&rebuilt, &windows)),
        );
        assert!(
            d_rebuilt < d_plain,
            "{flags}: logits moved further from the dense model's ({d_rebuilt} vs {d_plain})"
        );
    }
}

#[test]
fn bad_calibration_input_is_refused_cleanly() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");
    let expect = |flags: &[&str], code: i32, needles: &[&str]| {
        let mut all = vec![
            "--sparsity",
            "0.5",
            "--prune-method",
            "wanda",
            "--top-up",
            "uniform",
            "--quiet",
        ];
        all.extend(flags);
        let r = run(job(&fx.model, &out, &all));
        assert_eq!(r.code, code, "{flags:?}: {}", r.stderr);
        assert!(
            r.stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 2,
            "{}",
            r.stderr
        );
        for n in needles {
            assert!(
                r.stderr.contains(n),
                "{flags:?} should mention {n}: {}",
                r.stderr
            );
        }
        assert!(
            snapshot(out_dir.path()).is_empty(),
            "{flags:?}: nothing written"
        );
    };
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    expect(
        &["--calib", empty.to_str().unwrap()],
        2,
        &["--calib", "empty.txt", "at least 64"],
    );
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "It was a truth.").unwrap();
    expect(
        &["--calib", short.to_str().unwrap()],
        2,
        &["short.txt", "at most 15 tokens"],
    );
    let junk = dir.path().join("ids.json");
    std::fs::write(&junk, "{\"not\": \"ids\"}").unwrap();
    expect(
        &["--calib", junk.to_str().unwrap()],
        2,
        &["ids.json", "array of token ids"],
    );
    let big = dir.path().join("big-ids.json");
    std::fs::write(&big, format!("[{}]", vec!["300"; 100].join(","))).unwrap();
    expect(
        &["--calib", big.to_str().unwrap()],
        2,
        &["big-ids.json", "token id 300", "vocabulary of 256"],
    );
    // SmolLM2's tokenizer does not belong to the tiny model (256-token vocabulary).
    let smol = fixture("smollm2").dir.join("tokenizer.json");
    let text = crate::harness::austen("emma");
    expect(
        &[
            "--calib",
            text.to_str().unwrap(),
            "--tokenizer",
            smol.to_str().unwrap(),
        ],
        1,
        &["tokenizer.json", "49152 tokens", "256 rows"],
    );
    // N:M groups that do not tile the inputs, and a pattern that is no pattern.
    let (calib, _) = token_documents(dir.path());
    expect(
        &["--calib", calib.to_str().unwrap(), "--nm", "3:6"],
        2,
        &["--nm", "divisible by 6"],
    );
    expect(
        &["--calib", calib.to_str().unwrap(), "--nm", "4:2"],
        2,
        &["--nm"],
    );
}

#[test]
fn without_calibration_data_the_model_writes_its_own() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let flags =
        "--sparsity 0.5 --prune-method wanda --top-up uniform --nsamples 3 --seqlen 24 --quiet";
    let run_with_seed = |name: &str, seed: u64| {
        let out = dir.path().join(format!("{name}.onnx"));
        prune_ok(&fx.model, &out, &format!("{flags} --seed {seed}"))
    };
    let report = run_with_seed("a", 11);
    run_with_seed("b", 11);
    run_with_seed("c", 12);
    assert_eq!(report["calibration"]["source"], "self_generated");
    assert_eq!(report["calibration"]["windows"], 3);
    assert_eq!(report["sparsity"]["measured"], 0.5);
    let data = |n: &str| std::fs::read(dir.path().join(format!("{n}.onnx.data"))).unwrap();
    assert!(
        data("a") == data("b"),
        "seeded generation: same calibration, same masks"
    );
    // Another seed generates other windows and so, somewhere, other masks.
    assert!(data("a") != data("c"));
}
