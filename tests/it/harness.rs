//! Test harness: fixture paths, running the binary, scratch folders, tensor comparison.

use neuroal_onnx::onnx::{visit_graphs, OnnxModel};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated fixtures; fails with the command to run when they are missing.
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/fixtures");
    assert!(
        [
            "tiny",
            "extattr",
            "smollm2",
            "smollm2-genai",
            "gemma3",
            "austen",
            "dsnot"
        ]
        .iter()
        .all(|f| dir.join(f).is_dir()),
        "fixtures missing in {}: run `make setup` first",
        dir.display()
    );
    dir
}

/// One tiny fixture: its folder, model file and manifest.
pub struct Fixture {
    pub name: String,
    pub dir: PathBuf,
    pub model: PathBuf,
    pub manifest: Value,
}

/// A fixture folder under `.cache/fixtures` (`tiny/llama`, `smollm2`).
pub fn fixture(rel: &str) -> Fixture {
    let dir = fixtures().join(rel);
    let text = std::fs::read_to_string(dir.join("fixture.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let model = dir.join(manifest["model_file"].as_str().unwrap_or("model.onnx"));
    Fixture {
        name: rel.rsplit('/').next().unwrap_or(rel).to_string(),
        dir,
        model,
        manifest,
    }
}

/// Every tiny fixture, sorted by name.
pub fn tiny_fixtures() -> Vec<Fixture> {
    fixture_set("tiny", 8)
}

/// Every fixture folder under `.cache/fixtures/SET` (one with a tokenizer), sorted by name; at
/// least `at_least` of them.
pub fn fixture_set(set: &str, at_least: usize) -> Vec<Fixture> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join(set))
        .unwrap_or_else(|e| panic!("{set} fixtures: {e}; run `make setup`"))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("tokenizer.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= at_least,
        "expected at least {at_least} {set} fixtures, found {names:?}"
    );
    names
        .iter()
        .map(|n| fixture(&format!("{set}/{n}")))
        .collect()
}

/// The result of running the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns self.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `neuroal-onnx` with `args`.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"));
    command.args(args);
    run_command(&mut command)
}

/// Runs `command` (the binary, with arguments and environment set by the caller) to completion.
pub fn run_command(command: &mut Command) -> Run {
    let out = command.output().expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Arguments of a pruning job: input model, output, then `flags`.
pub fn job(model: &Path, out: &Path, flags: &[&str]) -> Vec<OsString> {
    let mut args = vec![model.as_os_str().to_owned(), out.as_os_str().to_owned()];
    args.extend(flags.iter().map(OsString::from));
    args
}

/// Runs a pruning job that must succeed (`flags` split on whitespace) and returns its report.
pub fn prune_ok(model: &Path, out: &Path, flags: &str) -> Value {
    let flags: Vec<&str> = flags.split_whitespace().collect();
    run(job(model, out, &flags)).ok();
    let report = out.with_extension("report.json");
    serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("report JSON")
}

/// A scratch folder removed at the end of the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Copies every file of a fixture folder into `to` and returns the copied model path.
pub fn copy_fixture(fx: &Fixture, to: &Path) -> PathBuf {
    for entry in std::fs::read_dir(&fx.dir).expect("fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    to.join(fx.model.file_name().expect("model file name"))
}

/// Name → content of every file in a folder (to prove nothing changed or appeared).
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

/// (graph path, initializer name) → little-endian data bytes of every initializer of a model.
pub fn initializer_bytes(model: &OnnxModel) -> BTreeMap<(String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    visit_graphs(model.graph(), &mut |path, g, _| {
        for t in &g.initializer {
            let bytes = model.tensor_bytes(path, t).expect("tensor bytes").to_vec();
            out.insert((path.to_string(), t.name().to_string()), bytes);
        }
    })
    .expect("graph depth");
    out
}

/// The reference logits of a tiny fixture, `[seq, vocab]` row-major, and its input ids.
pub fn reference(fx: &Fixture) -> (Vec<i64>, Vec<f32>, usize) {
    let r = &fx.manifest["reference"];
    let ids: Vec<i64> = r["input_ids"][0]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect();
    let raw = std::fs::read(fx.dir.join(r["logits_file"].as_str().expect("file"))).expect("logits");
    let logits: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let vocab = fx.manifest["vocab"].as_u64().expect("vocab") as usize;
    assert_eq!(logits.len(), ids.len() * vocab);
    (ids, logits, vocab)
}

/// An Austen text fixture.
pub fn austen(book: &str) -> PathBuf {
    fixtures().join("austen").join(format!("{book}.txt"))
}

/// Copies `tiny/llama` (external data in model.onnx_data) into `dir`, rewrites its proto with
/// `edit` and returns the model path.
pub fn edited_llama(
    dir: &Path,
    edit: impl FnOnce(&mut neuroal_onnx::onnx::proto::ModelProto),
) -> PathBuf {
    use prost::Message;
    let model = copy_fixture(&fixture("tiny/llama"), dir);
    let bytes = std::fs::read(&model).expect("model");
    let mut proto =
        neuroal_onnx::onnx::proto::ModelProto::decode(bytes.as_slice()).expect("decodes");
    edit(&mut proto);
    std::fs::write(&model, proto.encode_to_vec()).expect("write");
    model
}

/// The fixture generator's Python (with onnxruntime and onnxruntime-genai), made by `make setup`.
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make setup` first",
        python.display()
    );
    python
}

/// Asserts that ONNX Runtime (the Python package, another process) opens `model` by its path
/// while working in an empty folder: every external reference of the model resolves beside it,
/// none against the working directory.
pub fn assert_loads_from_another_folder(model: &Path) {
    let elsewhere = scratch();
    let run = run_command(
        Command::new(python())
            .current_dir(elsewhere.path())
            .arg("-c")
            .arg("import onnxruntime, sys; onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])")
            .arg(model),
    );
    assert_eq!(
        run.code,
        0,
        "ONNX Runtime cannot open {} from another folder:\n{}",
        model.display(),
        run.stderr
    );
}

/// Every external `location` a model file names, initializers and node attributes, in every graph.
pub fn external_locations(model: &Path) -> std::collections::BTreeSet<String> {
    use neuroal_onnx::onnx::proto::tensor_proto::DataLocation;
    use neuroal_onnx::onnx::proto::{ModelProto, TensorProto};
    use prost::Message;
    let bytes = std::fs::read(model).expect("model");
    let proto = ModelProto::decode(bytes.as_slice()).expect("decodes");
    let mut locations = std::collections::BTreeSet::new();
    let mut add = |t: &TensorProto| {
        if t.data_location() == DataLocation::External {
            for e in &t.external_data {
                if e.key() == "location" {
                    locations.insert(e.value().to_string());
                }
            }
        }
    };
    visit_graphs(proto.graph.as_ref().expect("graph"), &mut |_, g, _| {
        g.initializer.iter().for_each(&mut add);
        for node in &g.node {
            for attr in &node.attribute {
                attr.t.iter().chain(attr.tensors.iter()).for_each(&mut add);
            }
        }
    })
    .expect("graph depth");
    locations
}
