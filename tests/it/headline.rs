//! The headline command, `neuroal-onnx IN OUT --sparsity 0.7`, as a user types it (at test-sized
//! `--nsamples`/`--seqlen`): Wanda + NeuroAL calibrated on text the model writes itself, on every
//! exporter convention, with and without a KV cache.

use crate::harness::{
    assert_loads_from_another_folder, fixture, fixture_set, initializer_bytes, job, run, scratch,
};
use neuroal_onnx::onnx::OnnxModel;
use serde_json::Value;

const BARE: [&str; 6] = ["--sparsity", "0.7", "--nsamples", "4", "--seqlen", "32"];

#[test]
fn the_bare_command_prunes_every_convention_with_and_without_a_kv_cache() {
    let mut fixtures = fixture_set("tiny", 12);
    fixtures.extend(fixture_set("nocache", 12));
    for fx in fixtures {
        let set = fx.dir.parent().and_then(|p| p.file_name()).expect("set");
        let label = format!("{}/{}", set.to_string_lossy(), fx.name);
        let dir = scratch();
        let out = dir.path().join("pruned.onnx");
        let r = run(job(&fx.model, &out, &BARE));
        assert_eq!(r.code, 0, "{label}: {}", r.stderr);
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(out.with_extension("report.json")).expect("report"),
        )
        .expect("JSON");
        assert_eq!(report["calibration"]["source"], "self_generated", "{label}");
        assert_eq!(report["method"]["top_up"], "neuroal", "{label}");
        let measured = report["sparsity"]["measured"].as_f64().expect("sparsity");
        assert!(
            (measured - 0.7).abs() < 0.02,
            "{label}: sparsity {measured}"
        );
        assert_loads_from_another_folder(&out);
    }
}

#[test]
fn without_a_kv_cache_the_model_writes_the_same_text_and_prunes_the_same_weights() {
    // The same weights exported with and without a cache: recomputing the prefix must sample the
    // same tokens from the same seed as feeding the cache, so the masks agree weight for weight.
    let pruned = |set: &str| {
        let fx = fixture(&format!("{set}/llama"));
        let dir = scratch();
        let out = dir.path().join("pruned.onnx");
        let mut flags = BARE.to_vec();
        flags.extend(["--top-up", "uniform", "--quiet"]);
        run(job(&fx.model, &out, &flags)).ok();
        let model = OnnxModel::load(&out).expect("output loads");
        initializer_bytes(&model)
    };
    let (cached, recomputed) = (pruned("tiny"), pruned("nocache"));
    assert_eq!(cached.len(), recomputed.len());
    for (key, bytes) in &cached {
        assert_eq!(Some(bytes), recomputed.get(key), "{key:?}");
    }
}

#[test]
fn verbatim_windows_that_do_not_fit_are_refused_before_any_work() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let windows = dir.path().join("windows.json");
    for (content, extra, needle) in [
        ("[[1, 2, 3, 4], [5, 6, 7]]", "", "window 1 has 3 tokens"),
        (
            "[[1, 2, 3, 4], [5, 6, 7, 256]]",
            "",
            "window 1: 256 is not a token id",
        ),
        ("[1, 2, 3]", "", "token-id arrays"),
        ("[[1, 2, 3, 4]]", "--nsamples 8", "cannot be used with"),
    ] {
        std::fs::write(&windows, content).unwrap();
        let mut flags = vec!["--sparsity", "0.5", "--calib-windows"];
        flags.push(windows.to_str().unwrap());
        flags.extend(extra.split_whitespace());
        let r = run(job(&fx.model, &out, &flags));
        assert_eq!(r.code, 2, "{content}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{content}: {}", r.stderr);
        assert!(!out.exists());
    }
}
