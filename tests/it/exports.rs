//! Exports as users have them: node attributes in the external data file, onnxruntime-genai
//! builder folders with `GroupQueryAttention` and fp16 caches. Every output is opened by ONNX
//! Runtime from another folder, and genai outputs are served by onnxruntime-genai itself.

use crate::harness::{
    assert_loads_from_another_folder, austen, copy_fixture, external_locations, fixture, job,
    python, run_command, scratch, Fixture,
};
use neuroal_onnx::onnx::proto::attribute_proto::AttributeType;
use neuroal_onnx::onnx::proto::tensor_proto::{DataLocation, DataType};
use neuroal_onnx::onnx::proto::{AttributeProto, NodeProto, StringStringEntryProto, TensorProto};
use neuroal_onnx::onnx::{ModelWriter, OnnxModel, SaveOptions};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The `extattr` fixtures: every tiny convention saved with its node attributes' tensors in the
/// data file (onnx's `convert_attribute=True`).
fn attribute_fixtures() -> Vec<Fixture> {
    crate::harness::fixture_set("extattr", 12)
}

/// Runs a pruning job from the working directory `cwd` (`flags` split on whitespace); asserts
/// it succeeds.
fn run_in(cwd: &Path, model: &Path, out: &Path, flags: &str) {
    let args = job(model, out, &flags.split_whitespace().collect::<Vec<_>>());
    let run = run_command(
        Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"))
            .current_dir(cwd)
            .args(&args),
    );
    assert_eq!(run.code, 0, "{args:?} failed:\n{}", run.stderr);
}

#[test]
fn attribute_tensors_in_the_data_file_are_pruned_from_any_folder() {
    let calib = austen("emma");
    for fx in attribute_fixtures() {
        let external = fx.manifest["attribute_tensors_external"]
            .as_u64()
            .expect("count");
        assert!(external > 0, "{}: no attribute tensor is external", fx.name);
        let (cwd, out_dir) = (scratch(), scratch());
        let out = out_dir.path().join("pruned.onnx");
        // A calibrated job builds its stage models in memory, where ONNX Runtime would resolve
        // external attribute data against the working directory.
        let flags = format!(
            "--sparsity 0.5 --top-up uniform --calib {} --nsamples 2 --seqlen 32 --quiet",
            calib.display()
        );
        run_in(cwd.path(), &fx.model, &out, &flags);
        let locations = external_locations(&out);
        assert_eq!(
            locations,
            BTreeSet::from(["pruned.onnx.data".to_string()]),
            "{}: the output refers to other files",
            fx.name
        );
        assert_loads_from_another_folder(&out);
    }
}

#[test]
fn the_smallest_external_attribute_model_is_read_inline_and_written_self_contained() {
    let fx = fixture("extattr/constant-of-shape-min");
    let model = OnnxModel::load(&fx.model).expect("loads");
    let value = model.graph().node[1].attribute[0]
        .t
        .as_ref()
        .expect("ConstantOfShape value");
    assert_eq!(value.data_location(), DataLocation::Default);
    assert_eq!(value.raw_data(), &1.5f32.to_le_bytes()[..]);

    let out_dir = scratch();
    let out = out_dir.path().join("copy.onnx");
    ModelWriter::create(&model, &out, &SaveOptions::default())
        .expect("writer")
        .finish()
        .expect("written");
    assert!(external_locations(&out).is_empty());
    let elsewhere = scratch();
    let run = run_command(
        Command::new(python())
            .current_dir(elsewhere.path())
            .arg("-c")
            .arg(
                "import onnxruntime, numpy, sys; s = onnxruntime.InferenceSession(sys.argv[1]); \
                 print(s.run(None, {'x': numpy.arange(6, dtype=numpy.float32).reshape(2, 3)})[0].tolist())",
            )
            .arg(&out),
    );
    let expected = fx.manifest["reference"]["y"].to_string().replace(',', ", ");
    assert_eq!(run.stdout.trim(), expected, "{}", run.stderr);
}

#[test]
fn a_reference_that_would_dangle_is_refused_with_its_tensor_before_anything_is_written() {
    let mut model = OnnxModel::load(&fixture("tiny/llama").model).expect("loads");
    // An attribute still pointing at the input's data file, as a writer that copied node
    // attributes as they are would leave it.
    let dangling = TensorProto {
        dims: vec![4],
        data_type: Some(DataType::Float as i32),
        data_location: Some(DataLocation::External as i32),
        external_data: [
            ("location", "model.onnx_data"),
            ("offset", "0"),
            ("length", "16"),
        ]
        .iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v.to_string()),
        })
        .collect(),
        ..Default::default()
    };
    let graph = model.proto.graph.as_mut().expect("graph");
    graph.node.push(NodeProto {
        name: Some("/model/Constant_dangling".into()),
        op_type: Some("Constant".into()),
        output: vec!["dangling".into()],
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(dangling),
            ..Default::default()
        }],
        ..Default::default()
    });
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let e = ModelWriter::create(&model, &out, &SaveOptions::default())
        .expect("writer")
        .finish()
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("node '/model/Constant_dangling' attribute 'value'")
            && e.contains("model.onnx_data"),
        "{e}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Generates a few tokens after the prompt "The" from the folder of `model` with
/// onnxruntime-genai, working elsewhere.
fn generate_with_genai(model: &Path) -> Value {
    generate_with_genai_after(model, &["--max-new-tokens", "6"])
}

/// Like [`generate_with_genai`], with the script's own arguments (`--prompt`, `--max-new-tokens`).
fn generate_with_genai_after(model: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/genai_generate.py");
    let elsewhere = scratch();
    let run = run_command(
        Command::new(python())
            .current_dir(elsewhere.path())
            .arg(script)
            .arg(model.parent().expect("folder"))
            .args(args),
    );
    assert_eq!(run.code, 0, "onnxruntime-genai failed: {}", run.stderr);
    serde_json::from_str(run.stdout.trim()).expect("one JSON line")
}

#[test]
fn genai_builder_folders_are_pruned_into_folders_onnxruntime_genai_serves() {
    for name in ["genai-gqa", "genai-gqa-fp16"] {
        let fx = fixture(&format!("tiny/{name}"));
        let out_dir = scratch();
        let out = out_dir.path().join("pruned.onnx");
        // No --calib: the model writes its own calibration text through its (fp16) KV cache.
        let persuasion = austen("persuasion");
        let flags = format!(
            "--sparsity 0.5 --nsamples 2 --seqlen 32 --eval-text {} --eval-windows 2 --quiet",
            persuasion.display()
        );
        run_in(out_dir.path(), &fx.model, &out, &flags);
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(out.with_extension("report.json")).expect("report"),
        )
        .expect("JSON");
        let measured = report["sparsity"]["measured"].as_f64().expect("sparsity");
        assert!((measured - 0.5).abs() < 0.02, "{name}: sparsity {measured}");
        let eval = &report["evaluation"][0];
        let (dense, pruned) = (
            eval["dense"]["perplexity"]
                .as_f64()
                .expect("dense perplexity"),
            eval["pruned"]["perplexity"]
                .as_f64()
                .expect("pruned perplexity"),
        );
        assert!(
            dense.is_finite() && pruned.is_finite(),
            "{name}: {dense} {pruned}"
        );
        assert_ne!(
            dense, pruned,
            "{name}: pruning half of the weights changes the model"
        );

        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.path().join("genai_config.json")).expect("copied"),
        )
        .expect("JSON");
        assert_eq!(
            config["model"]["decoder"]["filename"], "pruned.onnx",
            "{name}"
        );
        assert!(out_dir.path().join("tokenizer.json").is_file(), "{name}");
        assert_loads_from_another_folder(&out);
        let tokens = generate_with_genai(&out)["tokens"]
            .as_array()
            .expect("tokens")
            .len();
        assert!(tokens > 0, "{name}: onnxruntime-genai generated nothing");
    }
}

#[test]
fn a_genai_folder_pruned_in_place_keeps_its_own_config() {
    let fx = fixture("tiny/genai-gqa");
    let dir = scratch();
    let model = copy_fixture(&fx, dir.path());
    let config = std::fs::read(dir.path().join("genai_config.json")).expect("config");
    let out = dir.path().join("pruned.onnx");
    let flags = "--sparsity 0.5 --prune-method magnitude --top-up uniform --quiet";
    run_in(dir.path(), &model, &out, flags);
    assert_eq!(
        std::fs::read(dir.path().join("genai_config.json")).expect("config"),
        config,
        "the input folder's config was rewritten"
    );
    assert_loads_from_another_folder(&out);
}

/// Dense and pruned perplexity of a job's report.
fn perplexities(report: &Path) -> (f64, f64) {
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report")).expect("JSON");
    let eval = &report["evaluation"][0];
    (
        eval["dense"]["perplexity"].as_f64().expect("dense"),
        eval["pruned"]["perplexity"].as_f64().expect("pruned"),
    )
}

#[test]
fn smollm2_in_the_genai_fp16_form_is_pruned_on_its_own_text_and_served() {
    let fx = fixture("smollm2-genai");
    let persuasion = austen("persuasion");
    let eval = format!(
        "--eval-text {} --eval-windows 4 --seqlen 64",
        persuasion.display()
    );
    let dir = scratch();
    // The fp32 optimum export of the same weights, not pruned: the reference perplexity.
    let reference = dir.path().join("fp32.onnx");
    crate::harness::prune_ok(
        &fixture("smollm2").model,
        &reference,
        &format!("--sparsity 0.5 --prune-method dense --top-up uniform --quiet {eval}"),
    );
    let (fp32, _) = perplexities(&reference.with_extension("report.json"));

    // Wanda calibrated on text the model writes through its float16 cache.
    let out_dir = scratch();
    let out = out_dir.path().join("model.onnx");
    crate::harness::prune_ok(
        &fx.model,
        &out,
        &format!("--sparsity 0.5 --top-up uniform --nsamples 8 --quiet {eval}"),
    );
    let (dense, pruned) = perplexities(&out.with_extension("report.json"));
    // Measured: 75.107 in float32 and 75.116 in float16; pruned 133.
    assert!(
        (dense - fp32).abs() / fp32 < 2e-3,
        "float16 dense {dense} against float32 {fp32}"
    );
    assert!(
        pruned > dense && pruned < 3.0 * dense,
        "pruned {pruned}, dense {dense}"
    );

    assert_loads_from_another_folder(&out);
    let prompt = "It is a truth universally acknowledged, that a single man in possession of a good fortune,";
    let generated =
        generate_with_genai_after(&out, &["--prompt", prompt, "--max-new-tokens", "12"]);
    let text = generated["text"].as_str().expect("text");
    // Words, not token soup: mostly letters and spaces, at least three lower-case words.
    let wordy = text
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .count();
    let words = text
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        .count();
    assert!(
        wordy * 10 > text.chars().count() * 7 && words >= 3,
        "onnxruntime-genai wrote {text:?}"
    );
}

#[test]
fn without_genai_config_the_head_size_comes_from_the_attention_node() {
    use neuroal_onnx::onnx::proto::{tensor_shape_proto::dimension, type_proto};
    let fx = fixture("tiny/genai-gqa");
    let model = OnnxModel::load(&fx.model).expect("loads");
    let past = model
        .graph()
        .input
        .iter()
        .find(|i| i.name() == "past_key_values.0.key")
        .expect("cache input");
    let Some(type_proto::Value::TensorType(t)) =
        past.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        panic!("tensor input")
    };
    assert!(
        matches!(
            t.shape.as_ref().expect("shape").dim[3].value,
            Some(dimension::Value::DimParam(_))
        ),
        "the fixture's head size must be symbolic for this test to mean anything"
    );
    let dir = scratch();
    let input = copy_fixture(&fx, dir.path());
    std::fs::remove_file(dir.path().join("genai_config.json")).expect("remove");
    let out = dir.path().join("pruned.onnx");
    crate::harness::prune_ok(
        &input,
        &out,
        &format!(
            "--sparsity 0.5 --top-up uniform --calib {} --nsamples 2 --seqlen 32 --quiet",
            austen("emma").display()
        ),
    );
    assert_loads_from_another_folder(&out);
}

#[test]
fn a_quantized_cache_is_a_model_limit_named_with_its_input() {
    let dir = scratch();
    let model = crate::harness::edited_llama(dir.path(), |proto| {
        use neuroal_onnx::onnx::proto::type_proto;
        let graph = proto.graph.as_mut().expect("graph");
        let past = graph
            .input
            .iter_mut()
            .find(|i| i.name() == "past_key_values.1.value")
            .expect("cache input");
        if let Some(type_proto::Value::TensorType(t)) =
            past.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(DataType::Int8 as i32);
        }
    });
    let out = dir.path().join("out.onnx");
    let calib = austen("emma");
    let calib = calib.to_str().expect("UTF-8 path");
    let run = crate::harness::run(job(&model, &out, &["--sparsity", "0.5", "--calib", calib]));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("'past_key_values.1.value' is of type INT8")
            && !run.stderr.contains("ONNX Runtime"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
}
