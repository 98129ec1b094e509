//! The evaluation stage: logit agreement of pruned vs dense, zero-shot scoring, file digests.

use crate::harness::{austen, fixture, prune_ok, scratch};
use serde_json::Value;
use std::path::Path;

fn agreement(report: &Value) -> (f64, f64) {
    let a = &report["evaluation"][0]["agreement"];
    (
        a["kl_divergence"].as_f64().unwrap(),
        a["top1_agreement"].as_f64().unwrap(),
    )
}

#[test]
fn kl_divergence_is_zero_for_dense_and_grows_with_sparsity() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let text = austen("persuasion");
    let mut seen = Vec::new();
    for (method, sparsity) in [("dense", 0.0), ("magnitude", 0.3), ("magnitude", 0.7)] {
        let out = dir.path().join(format!("{method}-{sparsity}.onnx"));
        let flags = format!(
            "--sparsity {sparsity} --prune-method {method} --top-up uniform --eval-text {} --seqlen 64 --eval-windows 3 --quiet",
            text.display()
        );
        let report = prune_ok(&fx.model, &out, &flags);
        assert_eq!(
            report["evaluation"][0]["agreement"]["positions"].as_u64(),
            Some(3 * 64)
        );
        seen.push(agreement(&report));
    }
    assert_eq!(seen[0], (0.0, 1.0), "an unpruned model agrees exactly");
    assert!(
        0.0 < seen[1].0 && seen[1].0 < seen[2].0,
        "KL grows with sparsity: {seen:?}"
    );
    assert!(seen[2].1 < 1.0, "top-1 agreement drops: {seen:?}");
}

/// `sha256sum`'s digest of a file, as an independent check.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn the_report_names_every_file_read_and_written_with_its_sha256() {
    let fx = fixture("tiny/genai"); // bf16 weights in external data
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let report = prune_ok(
        &fx.model,
        &out,
        "--sparsity 0.5 --prune-method magnitude --top-up uniform --quiet",
    );
    for side in ["input", "output"] {
        let files = report[side]["files"].as_array().unwrap();
        assert!(files.len() >= 2, "{side}: model and data file: {files:?}");
        for f in files {
            let path = Path::new(f["path"].as_str().unwrap());
            assert_eq!(f["sha256"].as_str().unwrap(), sha256sum(path), "{side}");
            assert_eq!(
                f["bytes"].as_u64().unwrap(),
                std::fs::metadata(path).unwrap().len()
            );
        }
    }
    let d = &report["deployment"];
    assert!(d["zstd_pruned_bytes"].as_u64() < d["zstd_dense_bytes"].as_u64());
    assert!(d["note"].as_str().unwrap().contains("--nm 2:4"));
}

/// Questions cut from a held-out book: the context is a passage, the right choice the words that
/// follow it, the wrong one letters no English text has. `gold_right` picks which is gold.
fn passage_questions(path: &Path, gold_right: bool) {
    let text = std::fs::read_to_string(austen("persuasion")).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut lines = String::new();
    for q in 0..8 {
        let start = 2000 + q * 3000;
        let context = words[start..start + 40].join(" ");
        let right = format!(" {}", words[start + 40..start + 44].join(" "));
        let wrong = [" qzxv jkwq", " vvxq zzjk", " kqxz wvjj", " jjqz xkvw"][q % 4];
        let (choices, gold) = if q % 2 == 0 {
            ([right.as_str(), wrong], if gold_right { 0 } else { 1 })
        } else {
            ([wrong, right.as_str()], if gold_right { 1 } else { 0 })
        };
        lines +=
            &serde_json::json!({"context": context, "choices": choices, "gold": gold}).to_string();
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn zero_shot_ranks_the_real_continuation_above_gibberish_on_smollm2() {
    let fx = fixture("smollm2");
    let dir = scratch();
    let (right, wrong) = (
        dir.path().join("right.jsonl"),
        dir.path().join("wrong.jsonl"),
    );
    passage_questions(&right, true);
    passage_questions(&wrong, false);
    let out = dir.path().join("out.onnx");
    let flags = format!(
        "--sparsity 0 --prune-method dense --top-up uniform --tasks zero-shot --task-file {} --task-file {} --device cpu --quiet",
        right.display(),
        wrong.display()
    );
    let report = prune_ok(&fx.model, &out, &flags);
    let tasks = report["zero_shot"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for (task, want) in tasks.iter().zip([1.0, 0.0]) {
        assert_eq!(task["items"], 8);
        for model in ["dense", "pruned"] {
            for metric in ["acc", "acc_norm"] {
                assert_eq!(task[model][metric].as_f64(), Some(want), "{task}");
            }
        }
    }
    assert!(report["evaluation"].as_array().unwrap().is_empty());
}

/// Perplexity of the whole model at `path` in one ONNX Runtime session, as an independent check
/// on the staged evaluation of the job.
fn whole_model_perplexity(
    path: &Path,
    text: &[u32],
    prefix: &[u32],
    seqlen: usize,
    windows: usize,
) -> f64 {
    use neuroal_onnx::eval::perplexity;
    use neuroal_onnx::onnx::OnnxModel;
    use neuroal_onnx::progress::Progress;
    use neuroal_onnx::runtime::{locate_library, CausalLm, Device, Runtime};
    let lib = locate_library(None).expect("libonnxruntime: run `make setup`");
    let rt = Runtime::new(&lib, Device::Cpu, 1, &Progress::silent()).expect("ONNX Runtime");
    let model = OnnxModel::load(path).unwrap();
    let mut lm = CausalLm::open(&rt, &model).unwrap();
    perplexity(
        &mut lm,
        text,
        seqlen,
        Some(windows),
        prefix,
        &Progress::silent(),
        "check",
    )
    .unwrap()
    .perplexity
}

#[test]
fn staged_evaluation_gives_the_whole_models_perplexities_in_every_convention() {
    let text = austen("persuasion");
    // The scaled-down 7B model's float32 embedding, tied to its head, is large enough to be fed
    // to its stages rather than copied into them (`FED_BYTES`); the tiny ones' are not.
    let scaled_7b = fixture("llama7b-small");
    let embedding = &scaled_7b.manifest["config"];
    let bytes = embedding["vocab"].as_u64().unwrap() * embedding["hidden"].as_u64().unwrap() * 4;
    assert!(bytes >= neuroal_onnx::graph::FED_BYTES as u64);
    for fx in crate::harness::tiny_fixtures()
        .into_iter()
        .chain([scaled_7b])
    {
        let dir = scratch();
        let out = dir.path().join("out.onnx");
        let flags = format!(
            "--sparsity 0.5 --prune-method magnitude --top-up uniform --eval-text {} --eval-seqlen 48 --eval-windows 3 --quiet",
            text.display()
        );
        let report = prune_ok(&fx.model, &out, &flags);
        let tokenizer = neuroal_onnx::calib::TextTokenizer::load(&fx.dir, None).unwrap();
        let ids = tokenizer.encode_file(&text).unwrap();
        let eval = &report["evaluation"][0];
        // Stage boundaries change which operators ONNX Runtime fuses; with 16-bit weights and
        // activations that moves the last bits.
        let tolerance = match fx.manifest["weight_dtype"].as_str() {
            Some("float32") => 1e-4,
            _ => 1e-3,
        };
        for (side, model) in [("dense", &fx.model), ("pruned", &out)] {
            let staged = eval[side]["perplexity"].as_f64().unwrap();
            let whole = whole_model_perplexity(model, &ids, tokenizer.window_prefix(), 48, 3);
            assert!(
                (staged - whole).abs() / whole < tolerance,
                "{} {side}: staged {staged}, whole model {whole}",
                fx.name
            );
        }
        let (dense, pruned) = (
            eval["dense"]["perplexity"].as_f64().unwrap(),
            eval["pruned"]["perplexity"].as_f64().unwrap(),
        );
        assert_ne!(dense, pruned, "{}: half of the weights pruned", fx.name);
    }
}
