//! ONNX Runtime versions and flavours: the oldest version the build accepts (1.19, `api-19`) and
//! 1.30 give the same pruned weights as the default 1.32, and the GPU flavour (`make setup-gpu`,
//! with its NVIDIA libraries preloaded) fails cleanly where there is no CUDA driver.
//!
//! The GPU-flavour tests are ignored by default: `.cache/ort-gpu` is a few GB and not part of
//! `make setup`. Run them with `make setup-gpu` and `cargo test --release -- --ignored ort_versions`.

use crate::harness::{austen, fixture, initializer_bytes, run_command, scratch, Run};
use neuroal_onnx::onnx::OnnxModel;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A library under the repository's `.cache`, or a panic naming the make target that fetches it.
fn cached_library(rel: &str, target: &str) -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(
        lib.is_file(),
        "{} missing: run `make {target}` first",
        lib.display()
    );
    lib
}

/// Runs `neuroal-onnx` with `args`, with no `ORT_DYLIB_PATH` and no `LD_LIBRARY_PATH`: the library
/// is the one `--ort-lib` names, or the project's default, and it finds its dependencies itself.
fn run_clean(args: &[String]) -> Run {
    run_command(
        Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"))
            .args(args)
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("LD_LIBRARY_PATH"),
    )
}

/// A calibrated job with evaluation on the tiny llama, writing `out`; `extra` flags are appended.
fn job(method: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let fx = fixture("tiny/llama");
    let mut args: Vec<String> = vec![fx.model.display().to_string(), out.display().to_string()];
    let flags = format!(
        "--sparsity 0.5 --prune-method {method} --top-up uniform --calib {} --nsamples 6 --seqlen 48 --eval-text {} --eval-windows 2",
        austen("emma").display(),
        austen("persuasion").display()
    );
    args.extend(flags.split_whitespace().map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.with_extension("report.json")).expect("report");
    serde_json::from_str(&text).expect("report JSON")
}

/// (text, dense perplexity, pruned perplexity) of every evaluation text of a report.
fn perplexities(report: &Value) -> Vec<(String, f64, f64)> {
    report["evaluation"]
        .as_array()
        .expect("evaluation")
        .iter()
        .map(|e| {
            (
                e["text"].as_str().expect("text").to_string(),
                e["dense"]["perplexity"].as_f64().expect("dense"),
                e["pruned"]["perplexity"].as_f64().expect("pruned"),
            )
        })
        .collect()
}

/// Runs Wanda + uniform with evaluation on the library `rel` (under the repository) and on the
/// default 1.32, and checks the versions reported, that the weights are the same bytes and that
/// the perplexities agree to a relative 1e-5.
fn same_weights_as_the_default(rel: &str, version: &str) {
    let old = cached_library(rel, "setup");
    let dir = scratch();
    let out_old = dir.path().join("old.onnx");
    let out_new = dir.path().join("default.onnx");
    let ort_lib = old.display().to_string();
    let a = run_clean(&job(
        "wanda",
        &out_old,
        &["--device", "cpu", "--quiet", "--ort-lib", &ort_lib],
    ));
    assert_eq!(a.code, 0, "ONNX Runtime {version}: {}", a.stderr);
    let b = run_clean(&job("wanda", &out_new, &["--device", "cpu", "--quiet"]));
    assert_eq!(b.code, 0, "ONNX Runtime 1.32 (default): {}", b.stderr);

    let (ra, rb) = (report(&out_old), report(&out_new));
    let reported = |r: &Value| {
        r["onnx_runtime"]["version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        reported(&ra).starts_with(&format!("{version}.")),
        "--ort-lib {}: {}",
        old.display(),
        ra["onnx_runtime"]
    );
    assert_eq!(reported(&rb), "1.32.0", "{}", rb["onnx_runtime"]);

    let weights = |p: &Path| initializer_bytes(&OnnxModel::load(p).expect("output loads"));
    let (wa, wb) = (weights(&out_old), weights(&out_new));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (key, bytes) in &wa {
        assert!(
            bytes == &wb[key],
            "tensor {key:?} differs between {version} and 1.32"
        );
    }
    assert_eq!(
        ra["sparsity"]["measured"], rb["sparsity"]["measured"],
        "measured sparsity"
    );

    let (pa, pb) = (perplexities(&ra), perplexities(&rb));
    assert_eq!(pa.len(), 1);
    assert_eq!(pa.len(), pb.len());
    for ((text, dense_a, pruned_a), (_, dense_b, pruned_b)) in pa.iter().zip(&pb) {
        for (what, x, y) in [("dense", dense_a, dense_b), ("pruned", pruned_a, pruned_b)] {
            assert!(
                ((x - y) / y).abs() < 1e-5,
                "{text}: {what} perplexity {x} ({version}) vs {y} (1.32)"
            );
        }
    }
}

#[test]
fn onnx_runtime_1_30_prunes_to_the_weights_of_1_32() {
    same_weights_as_the_default(".cache/ort-1.30/lib/libonnxruntime.so", "1.30");
}

/// 1.19 is the oldest version the build accepts (`api-19`) and the oldest PyPI wheel that ships
/// libonnxruntime as a library of its own.
#[test]
fn onnx_runtime_1_19_the_oldest_accepted_prunes_to_the_weights_of_1_32() {
    same_weights_as_the_default(".cache/ort-1.19/lib/libonnxruntime.so", "1.19");
}

/// Whether this host has the CUDA driver (then the GPU flavour should really run on the GPU).
fn cuda_driver_present() -> bool {
    // SAFETY: only loads and unloads the driver library.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

#[test]
#[ignore = "needs .cache/ort-gpu (`make setup-gpu`, about 2.4 GB, not part of `make setup`)"]
fn auto_with_the_gpu_flavour_runs_on_the_cpu_with_one_note_without_a_driver() {
    let lib = cached_library(".cache/ort-gpu/lib/libonnxruntime.so", "setup-gpu");
    let dir = scratch();
    let out = dir.path().join("auto.onnx");
    let ort_lib = lib.display().to_string();
    // Multiflow: its masks are always computed on the CPU, so the only device note is ONNX
    // Runtime's.
    let run = run_clean(&job(
        "multiflow",
        &out,
        &["--device", "auto", "--ort-lib", &ort_lib],
    ));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = report(&out);
    assert!(r["onnx_runtime"]["version"]
        .as_str()
        .unwrap_or("")
        .starts_with("1.3"));
    let notes: Vec<&str> = run
        .stderr
        .lines()
        .map(|l| l.trim_start_matches("\r\x1b[2K"))
        .filter(|l| l.starts_with("note:"))
        .collect();
    if cuda_driver_present() {
        eprintln!("libcuda.so.1 is present: checking that ONNX Runtime runs on CUDA");
        assert_eq!(r["onnx_runtime"]["device"], "cuda", "{}", run.stderr);
        assert!(notes.is_empty(), "{notes:?}");
        return;
    }
    assert_eq!(r["onnx_runtime"]["device"], "cpu");
    assert_eq!(notes.len(), 1, "one note line: {}", run.stderr);
    let note = notes[0];
    assert!(
        note.contains("CUDA execution provider unavailable") && note.contains("libcuda.so.1"),
        "the note names the missing driver: {note}"
    );
    // The first NVIDIA library that did not preload (cuDNN's runtime-compiled engines need the
    // driver too) is part of the same line.
    assert!(note.contains("preloading the NVIDIA libraries"), "{note}");
    let fallback = r["onnx_runtime"]["cuda_fallback"].as_str().unwrap_or("");
    assert!(fallback.contains("libcuda.so.1"), "{fallback}");
}

#[test]
#[ignore = "needs .cache/ort-gpu (`make setup-gpu`, about 2.4 GB, not part of `make setup`)"]
fn cuda_with_the_gpu_flavour_exits_2_naming_the_missing_driver() {
    let lib = cached_library(".cache/ort-gpu/lib/libonnxruntime.so", "setup-gpu");
    let dir = scratch();
    let out = dir.path().join("cuda.onnx");
    let ort_lib = lib.display().to_string();
    let run = run_clean(&job(
        "multiflow",
        &out,
        &["--device", "cuda", "--ort-lib", &ort_lib],
    ));
    if cuda_driver_present() {
        eprintln!("libcuda.so.1 is present: checking that ONNX Runtime runs on CUDA");
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(report(&out)["onnx_runtime"]["device"], "cuda");
        return;
    }
    assert_eq!(run.code, 2, "{}", run.stderr);
    let error: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("--device"))
        .collect();
    assert_eq!(error.len(), 1, "{}", run.stderr);
    assert!(
        error[0].contains("CUDA execution provider cannot be used")
            && error[0].contains("libcuda.so.1"),
        "the error names the missing driver: {}",
        run.stderr
    );
    assert!(!out.exists(), "no output after a failed run");
}
