//! Bad input gets a one- or two-line error naming the file, tensor or flag, a non-zero exit
//! code, and no output file.

use crate::harness::{copy_fixture, edited_llama, fixture, job, run, scratch, snapshot};
use neuroal_onnx::onnx::proto::tensor_proto::DataType;
use neuroal_onnx::onnx::proto::ModelProto;
use std::path::Path;

/// Runs a magnitude pruning job, asserts it fails with `code` and an error containing every
/// string in `needles`, and that no file appeared in `out_dir`.
fn fails(model: &Path, out: &Path, extra: &[&str], code: i32, needles: &[&str]) {
    let out_dir = out.parent().filter(|p| p.is_dir()).map(Path::to_path_buf);
    let before = out_dir.as_deref().map(snapshot);
    let mut flags = vec![
        "--prune-method",
        "magnitude",
        "--top-up",
        "uniform",
        "--quiet",
    ];
    if !extra.contains(&"--sparsity") {
        flags.extend(["--sparsity", "0.5"]);
    }
    flags.extend(extra);
    let r = run(job(model, out, &flags));
    assert_eq!(
        r.code, code,
        "exit code for {needles:?}; stderr: {}",
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        (1..=2).contains(&lines.len()),
        "a one- or two-line error: {}",
        r.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", r.stderr);
    for needle in needles {
        assert!(
            r.stderr.contains(needle),
            "error should mention {needle:?}: {}",
            r.stderr
        );
    }
    if let (Some(dir), Some(before)) = (out_dir, before) {
        assert_eq!(
            snapshot(&dir),
            before,
            "no output left behind for {needles:?}"
        );
    }
}

/// Sets external-data key `key` of the first external initializer and returns its name.
fn set_external(proto: &mut ModelProto, key: &str, value: &str) -> String {
    let graph = proto.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| !t.external_data.is_empty())
        .unwrap();
    let entry = t.external_data.iter_mut().find(|e| e.key() == key).unwrap();
    entry.value = Some(value.to_string());
    t.name().to_string()
}

#[test]
fn truncated_and_foreign_files() {
    let dir = scratch();
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");
    let good = std::fs::read(fixture("tiny/gpt2").model).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    fails(
        &truncated,
        &out,
        &[],
        1,
        &["truncated.onnx", "not a valid ONNX model"],
    );
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model\n").unwrap();
    fails(
        &text,
        &out,
        &[],
        1,
        &["notes.onnx", "not a valid ONNX model"],
    );
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    fails(&empty, &out, &[], 1, &["empty.onnx", "empty"]);
    fails(
        &dir.path().join("missing.onnx"),
        &out,
        &[],
        1,
        &["missing.onnx"],
    );
}

#[test]
fn external_data_that_is_missing_or_escapes_or_is_too_short() {
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");

    let dir = scratch();
    let model = copy_fixture(&fixture("tiny/llama"), dir.path());
    std::fs::remove_file(dir.path().join("model.onnx_data")).unwrap();
    fails(
        &model,
        &out,
        &[],
        1,
        &["model.onnx_data", "next to the model"],
    );

    for (location, needle) in [
        ("../model.onnx_data", "'..'"),
        ("/etc/passwd", "absolute path"),
    ] {
        let dir = scratch();
        let mut tensor = String::new();
        let model = edited_llama(dir.path(), |p| {
            tensor = set_external(p, "location", location)
        });
        fails(&model, &out, &[], 1, &[&tensor, location, needle]);
    }

    let dir = scratch();
    let mut tensor = String::new();
    let model = edited_llama(dir.path(), |p| {
        tensor = set_external(p, "offset", "999999999")
    });
    fails(&model, &out, &[], 1, &[&tensor, "past the end"]);

    let dir = scratch();
    let model = edited_llama(dir.path(), |p| tensor = set_external(p, "length", "12"));
    fails(&model, &out, &[], 1, &[&tensor, "holds 12 bytes"]);
}

#[test]
fn a_weight_of_an_unsupported_type() {
    let out_dir = scratch();
    let dir = scratch();
    // Re-type the first linear weight as DOUBLE (and give it the bytes that type needs).
    let model = edited_llama(dir.path(), |p| {
        let g = p.graph.as_mut().unwrap();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name() == "onnx::MatMul_1000")
            .unwrap();
        t.data_type = Some(DataType::Double as i32);
        t.external_data.clear();
        t.data_location = None;
        t.raw_data = Some(vec![0u8; 64 * 64 * 8].into());
    });
    fails(
        &model,
        &out_dir.path().join("out.onnx"),
        &[],
        1,
        &["onnx::MatMul_1000", "DOUBLE"],
    );
}

#[test]
fn a_graph_without_decoder_blocks() {
    let out_dir = scratch();
    let dir = scratch();
    // Rename every node so that no name, metadata or initializer places a linear in a block.
    let model = edited_llama(dir.path(), |p| {
        for (i, n) in p.graph.as_mut().unwrap().node.iter_mut().enumerate() {
            n.name = Some(format!("n{i}"));
        }
    });
    fails(
        &model,
        &out_dir.path().join("out.onnx"),
        &[],
        1,
        &["model.onnx", "no decoder blocks found"],
    );
}

#[test]
fn bad_flags_and_outputs() {
    let fx = fixture("tiny/llama");
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");
    for (bad, shown) in [
        ("1.0", "1 is outside"),
        ("-0.1", "-0.1 is outside"),
        ("1.5", "1.5 is outside"),
    ] {
        fails(
            &fx.model,
            &out,
            &["--sparsity", bad],
            2,
            &["--sparsity", shown],
        );
    }
    // The output may not be the input (nor its data file).
    let dir = scratch();
    let model = copy_fixture(&fx, dir.path());
    let before = snapshot(dir.path());
    fails(&model, &model, &[], 2, &["model.onnx", "input"]);
    let data_name = dir.path().join("model.onnx_data");
    let sneaky = dir.path().join("model.onnx_"); // its data file would be model.onnx_.data: allowed
    assert_ne!(sneaky.with_extension("data"), data_name);
    assert_eq!(snapshot(dir.path()), before, "input untouched");
    // An output folder that does not exist, or is a file.
    fails(
        &fx.model,
        &out_dir.path().join("missing/out.onnx"),
        &[],
        1,
        &["missing"],
    );
    let file = out_dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails(&fx.model, &file.join("out.onnx"), &[], 1, &["a-file"]);
    // An ONNX Runtime library that does not exist.
    let text = crate::harness::austen("persuasion");
    let eval = ["--eval-text", text.to_str().unwrap(), "--eval-windows", "1"];
    let mut flags = eval.to_vec();
    flags.extend(["--ort-lib", "/nonexistent/libonnxruntime.so"]);
    fails(
        &fx.model,
        &out,
        &flags,
        2,
        &["--ort-lib", "/nonexistent/libonnxruntime.so"],
    );
    // An evaluation text that does not exist.
    fails(
        &fx.model,
        &out,
        &["--eval-text", "/nonexistent/persuasion.txt"],
        1,
        &["/nonexistent/persuasion.txt"],
    );
}

/// An output that is one of the input's data files is refused before any work: with the default
/// calibrated method and an ONNX Runtime library that does not exist, the error is the output's
/// (exit 2, naming both files), nothing is written and the input files are unchanged.
#[test]
fn an_output_that_is_the_inputs_data_file_is_refused_before_any_work() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let model = copy_fixture(&fx, dir.path());
    let data = dir.path().join("model.onnx_data");
    assert!(
        data.is_file(),
        "the fixture keeps its weights in {}",
        data.display()
    );
    let before = snapshot(dir.path());
    let r = run(job(
        &model,
        &data,
        &[
            "--sparsity",
            "0.5",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
            "--quiet",
        ],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line error: {}", r.stderr);
    assert!(lines[0].starts_with("error: "), "{}", r.stderr);
    assert!(
        lines[0].contains("model.onnx_data") && lines[0].contains("input file"),
        "the error names the data file: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("--ort-lib"),
        "checked first: {}",
        r.stderr
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "input untouched, nothing written"
    );
}

#[test]
fn a_failure_after_the_model_is_written_leaves_no_output_and_no_stale_report() {
    // The last node's operator is unknown to ONNX Runtime but not to pruning: the job writes the
    // model, then fails when evaluation opens a session on it.
    let src = scratch();
    let model = edited_llama(src.path(), |p| {
        let graph = p.graph.as_mut().unwrap();
        let last = graph.node.last_mut().unwrap();
        last.op_type = Some("NoSuchOperator".into());
    });
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");
    std::fs::write(
        out_dir.path().join("out.report.json"),
        "{\"from\": \"an earlier run\"}",
    )
    .unwrap();
    let text = crate::harness::austen("persuasion");
    let r = run(job(
        &model,
        &out,
        &[
            "--sparsity",
            "0.5",
            "--prune-method",
            "magnitude",
            "--top-up",
            "uniform",
            "--eval-text",
            text.to_str().unwrap(),
            "--seqlen",
            "32",
            "--eval-windows",
            "1",
            "--quiet",
        ],
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("NoSuchOperator"), "{}", r.stderr);
    assert!(
        snapshot(out_dir.path()).is_empty(),
        "the model, its data file and the earlier run's report are gone: {:?}",
        snapshot(out_dir.path()).keys().collect::<Vec<_>>()
    );
}
