//! Inputs that broke the loader or discovery, or were made to try (fuzz/README.md; `make fuzz`
//! adds what the fuzzer finds), each stored in tests/fuzz-regressions/. Every one goes through the fuzz target's path
//! (load → discover → read every linear → partition → producers) through the library, and must
//! come back as `Ok` or a clean `Err`, never a panic. Files named `ok-*` must also load, discover
//! their blocks and read every weight, so that the path is known to reach the end. An input still
//! running after 30 s fails too (the fuzzer's limit is 10 s).
//!
//! A file is a bare `model.onnx`, or `NXFZ`, a little-endian u32 `n`, `n` bytes of model and
//! the rest as `model.onnx_data` (the same split as fuzz/fuzz_targets/load_model.rs).

use crate::harness::scratch;
use neuroal_onnx::graph::{discover, Partition, StageKind};
use neuroal_onnx::onnx::OnnxModel;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The model and, for `NXFZ` inputs, its external data.
fn split(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.strip_prefix(b"NXFZ") {
        Some(rest) if rest.len() >= 4 => {
            let (len, rest) = rest.split_at(4);
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (model, ext) = rest.split_at(len.min(rest.len()));
            (model, Some(ext))
        }
        _ => (data, None),
    }
}

/// The fuzz target's path. `Ok(n)`: `n` linears were read and the partition was made.
fn exercise(dir: &Path, data: &[u8]) -> Result<usize, String> {
    let (model_bytes, ext) = split(data);
    let model_path = dir.join("model.onnx");
    std::fs::write(&model_path, model_bytes).expect("write model.onnx");
    if let Some(ext) = ext {
        std::fs::write(dir.join("model.onnx_data"), ext).expect("write model.onnx_data");
    }
    let model = OnnxModel::load(&model_path).map_err(|e| format!("load: {e}"))?;
    let discovery = discover(&model).map_err(|e| format!("discover: {e}"))?;
    let mut read = 0;
    let mut first_error = None;
    for linear in &discovery.linears {
        match linear.read_out_in(&model) {
            Ok(w) => {
                assert_eq!(w.len(), linear.out_features * linear.in_features);
                read += 1;
            }
            Err(e) => {
                first_error.get_or_insert(format!("read {}: {e}", linear.weight.name));
            }
        }
    }
    let partition = Partition::new(&model, &discovery).map_err(|e| format!("partition: {e}"))?;
    for stage in partition.blocks() {
        let StageKind::Block(b) = stage.kind else {
            continue;
        };
        let linears: Vec<_> = discovery.block(b).collect();
        let producers = partition.producers(stage, &linears);
        assert_eq!(producers.len(), linears.len());
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(read),
    }
}

fn inputs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    files
}

/// Longer than the fuzzer's `-timeout=10`, for a loaded test machine.
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn every_stored_fuzz_input_returns_without_panicking() {
    let files = inputs();
    assert!(
        files.len() >= 5,
        "tests/fuzz-regressions holds only {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(file).unwrap();
        // On a thread, so that a hang fails the test instead of stalling it (the thread is left
        // to end with the process).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let dir = scratch();
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| {
                exercise(dir.path(), &data)
            })));
        });
        let Ok(outcome) = rx.recv_timeout(DEADLINE) else {
            failures.push(format!("{name}: still running after {DEADLINE:?}"));
            continue;
        };
        match outcome {
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: panicked: {message}"));
            }
            Ok(Err(e)) if name.starts_with("ok-") => {
                failures.push(format!("{name}: should load and read every linear: {e}"))
            }
            Ok(Ok(0)) if name.starts_with("ok-") => {
                failures.push(format!("{name}: no linear was found"))
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seeds of the reader targets (`fuzz/fuzz_targets/token_ids.rs`, `task_file.rs`) are files
/// the readers accept, so that the fuzzer starts from inputs that reach the end of the reader.
#[test]
fn the_reader_targets_seeds_are_accepted() {
    let seeds = |target: &str| -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        files
    };
    for file in seeds("token_ids") {
        if let Err(e) = neuroal_onnx::calib::read_token_ids(&file) {
            panic!("{}: {e}", file.display());
        }
    }
    for file in seeds("task_file") {
        if let Err(e) = neuroal_onnx::eval::zero_shot::read_questions(&file) {
            panic!("{}: {e}", file.display());
        }
    }
}
