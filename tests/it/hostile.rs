//! Hostile input and interruptions: malformed or malicious models, signals in the middle of a
//! job, a full disk, and thread counts. Every case runs the real binary and checks that it
//! fails cleanly (exit 1 or 2, never a panic or a signal), names the culprit in a one- or two-line
//! error, leaves nothing in the output folder and never changes an input file.

use crate::harness::{austen, copy_fixture, edited_llama, fixture, job, run, scratch, snapshot};
use neuroal_onnx::onnx::proto::attribute_proto::AttributeType;
use neuroal_onnx::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use neuroal_onnx::onnx::MAX_GRAPH_DEPTH;
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first linear weight of `tiny/llama` (block 0 q_proj, `[64, 64]` fp32, external).
const WEIGHT: &str = "onnx::MatMul_1000";

/// Runs a job on `model` (magnitude and uniform unless `extra` names a method or an allocation)
/// into a fresh folder and asserts that it fails with `code`, a one- or two-line error holding
/// every string of `needles`, no file in the output folder, and the model's folder
/// byte-identical afterwards.
fn refused(model: &Path, extra: &[&str], code: i32, needles: &[&str]) {
    let input_dir = model.parent().unwrap();
    let before = snapshot(input_dir);
    let out_dir = scratch();
    let mut flags = vec!["--sparsity", "0.5", "--quiet"];
    for (flag, default) in [("--prune-method", "magnitude"), ("--top-up", "uniform")] {
        if !extra.contains(&flag) {
            flags.extend([flag, default]);
        }
    }
    flags.extend(extra);
    let r = run(job(model, &out_dir.path().join("out.onnx"), &flags));
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "a panic for {needles:?}: {}",
        r.stderr
    );
    assert_eq!(
        r.code, code,
        "exit code for {needles:?} (101 is a panic, -1 a signal); stderr: {}",
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        (1..=2).contains(&lines.len()) && lines[0].starts_with("error: "),
        "a one- or two-line error: {}",
        r.stderr
    );
    for needle in needles {
        assert!(
            r.stderr.contains(needle),
            "the error should mention {needle:?}: {}",
            r.stderr
        );
    }
    assert!(
        snapshot(out_dir.path()).is_empty(),
        "nothing written for {needles:?}"
    );
    assert!(
        snapshot(input_dir) == before,
        "the input files changed for {needles:?}"
    );
}

fn main_graph(proto: &mut ModelProto) -> &mut GraphProto {
    proto.graph.as_mut().unwrap()
}

fn initializer<'a>(proto: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    main_graph(proto)
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("{name} in the fixture"))
}

/// The `[64, 64]` fp32 values of [`WEIGHT`], read from the fixture's data file.
fn weight_values() -> Vec<f32> {
    let fx = fixture("tiny/llama");
    let proto = ModelProto::decode(std::fs::read(&fx.model).unwrap().as_slice()).unwrap();
    let t = proto
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .find(|t| t.name() == WEIGHT)
        .unwrap();
    let entry = |key: &str| -> usize {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .unwrap()
            .value()
            .parse()
            .unwrap()
    };
    let (offset, length) = (entry("offset"), entry("length"));
    let data = std::fs::read(fx.dir.join("model.onnx_data")).unwrap();
    data[offset..offset + length]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Stores `t` inline as `raw_data` holding `bytes`.
fn set_inline(t: &mut TensorProto, bytes: Vec<u8>) {
    t.external_data.clear();
    t.data_location = None;
    t.raw_data = Some(bytes.into());
}

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// An `If` node whose `then_branch` holds an `If` ... `levels` graphs deep.
fn nested_ifs(levels: usize) -> NodeProto {
    let mut inner = node("leaf", "Identity", &["deep_x"], &["deep_y"]);
    for level in (0..levels).rev() {
        let branch = GraphProto {
            name: Some(format!("level{}", level + 1)),
            node: vec![inner],
            ..Default::default()
        };
        inner = NodeProto {
            attribute: vec![AttributeProto {
                name: Some("then_branch".into()),
                r#type: Some(AttributeType::Graph as i32),
                g: Some(branch),
                ..Default::default()
            }],
            ..node(
                &format!("deep_if_{level}"),
                "If",
                &["deep_cond"],
                &[&format!("deep_if_{level}_out")],
            )
        };
    }
    inner
}

#[test]
fn subgraphs_nested_too_deep_are_refused() {
    // The limit itself is accepted: the extra `If` is carried over untouched.
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        main_graph(p).node.push(nested_ifs(MAX_GRAPH_DEPTH))
    });
    let out = dir.path().join("out.onnx");
    run(job(
        &model,
        &out,
        &[
            "--sparsity",
            "0.5",
            "--prune-method",
            "magnitude",
            "--top-up",
            "uniform",
            "--quiet",
        ],
    ))
    .ok();
    // One level past it, and far past it (protobuf's recursion limit stops the decoder there).
    for levels in [MAX_GRAPH_DEPTH + 1, 4 * MAX_GRAPH_DEPTH] {
        let dir = scratch();
        let model = edited_llama(dir.path(), |p| main_graph(p).node.push(nested_ifs(levels)));
        refused(
            &model,
            &[],
            1,
            &[
                "model.onnx",
                &format!("nested more than {MAX_GRAPH_DEPTH} levels deep"),
            ],
        );
    }
}

#[test]
fn a_cyclic_graph_is_refused_naming_its_nodes() {
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        let g = main_graph(p);
        g.node.push(node(
            "cycle/A",
            "Add",
            &["cycle_b", "cycle_b"],
            &["cycle_a"],
        ));
        g.node
            .push(node("cycle/B", "Neg", &["cycle_a"], &["cycle_b"]));
    });
    refused(
        &model,
        &[],
        1,
        &["model.onnx", "'cycle/A'", "'cycle/B'", "cycle"],
    );
    // A node that reads its own output.
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        main_graph(p)
            .node
            .push(node("self_loop", "Relu", &["loop_out"], &["loop_out"]));
    });
    refused(&model, &[], 1, &["model.onnx", "'self_loop'", "cycle"]);
}

#[test]
fn impossible_shapes_are_refused_naming_the_tensor() {
    for (dims, needle) in [
        (vec![1i64 << 40, 1 << 40], "impossible shape"),
        (vec![i64::MAX, 2], "impossible shape"),
        (vec![-64, 64], "impossible shape"),
        (vec![64, -1], "impossible shape"),
        // Fits in 64 bits, but the data file holds nothing like it.
        (vec![1 << 40, 1 << 20], "4611686018427387904"),
    ] {
        let dir = scratch();
        let model = edited_llama(dir.path(), |p| initializer(p, WEIGHT).dims = dims.clone());
        refused(&model, &[], 1, &[WEIGHT, needle]);
    }
    // The same on an inline tensor.
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        let t = initializer(p, WEIGHT);
        set_inline(t, vec![0; 64 * 64 * 4]);
        t.dims = vec![1 << 40, 1 << 40];
    });
    refused(&model, &[], 1, &[WEIGHT, "impossible shape"]);
}

#[test]
fn external_data_through_a_symlink_out_of_the_folder_is_refused() {
    let dir = scratch();
    let outside = scratch();
    let model = copy_fixture(&fixture("tiny/llama"), dir.path());
    let data = dir.path().join("model.onnx_data");
    let moved = outside.path().join("model.onnx_data");
    std::fs::rename(&data, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &data).unwrap();
    let outside_before = snapshot(outside.path());
    refused(
        &model,
        &[],
        1,
        &[
            "model.onnx_data",
            "outside the model's folder",
            "symbolic link",
        ],
    );
    assert!(
        snapshot(outside.path()) == outside_before,
        "the symlink's target is untouched"
    );
}

#[test]
fn an_initializer_defined_twice_is_refused() {
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        let copy = initializer(p, WEIGHT).clone();
        main_graph(p).initializer.push(copy);
    });
    refused(&model, &[], 1, &[WEIGHT, "defined twice"]);
}

#[test]
fn data_that_does_not_match_the_shape_is_refused() {
    let n = 64 * 64 * 4;
    for (len, needle) in [(n - 4, "holds 16380 bytes"), (n + 4, "holds 16388 bytes")] {
        let dir = scratch();
        let model = edited_llama(dir.path(), |p| {
            set_inline(initializer(p, WEIGHT), vec![0; len])
        });
        refused(&model, &[], 1, &[WEIGHT, needle, "[64, 64] needs 16384"]);
    }
    // Typed fields rather than raw bytes: ten floats for a [64, 64] weight.
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| {
        let t = initializer(p, WEIGHT);
        set_inline(t, Vec::new());
        t.raw_data = None;
        t.float_data = vec![1.0; 10];
    });
    refused(&model, &[], 1, &[WEIGHT, "holds 40 bytes"]);
}

/// Decision: a prunable weight holding NaN or ±Inf is refused (exit 1) with the tensor's name and
/// the count of such values, whatever the method: scores, masks and the allocation searches mean
/// nothing on them, and a pruned model would silently carry them on.
#[test]
fn non_finite_weights_are_refused_with_their_count() {
    let mut values = weight_values();
    values[0] = f32::NAN;
    values[100] = f32::INFINITY;
    values[4095] = f32::NEG_INFINITY;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| set_inline(initializer(p, WEIGHT), bytes));
    let needles = [WEIGHT, "3 non-finite value(s)", "among its 4096 weights"];
    refused(&model, &[], 1, &needles);
    refused(&model, &["--prune-method", "dense"], 1, &needles);
    // The calibrated path reads the weight after running block 0's inputs through the runtime.
    let calib = austen("emma");
    let flags = [
        "--prune-method",
        "wanda",
        "--calib",
        calib.to_str().unwrap(),
        "--nsamples",
        "2",
        "--seqlen",
        "32",
    ];
    refused(&model, &flags, 1, &needles);
}

/// Encodes `proto` with `placeholder` (unique, ASCII) replaced by as many bytes that are not
/// UTF-8, as a protobuf string field must never hold.
fn with_invalid_utf8(proto: &ModelProto, placeholder: &str) -> Vec<u8> {
    let mut bytes = proto.encode_to_vec();
    let at = bytes
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("placeholder in the encoding");
    bytes[at + 1] = 0xff;
    bytes[at + 2] = 0xfe;
    bytes
}

#[test]
fn names_that_are_not_utf8_are_refused_naming_the_file() {
    type Edit = fn(&mut ModelProto);
    let edits: [(&str, Edit); 3] = [
        ("node", |p| {
            main_graph(p).node[0].name = Some("@@NAME@@".into())
        }),
        ("tensor", |p| {
            initializer(p, WEIGHT).name = Some("@@NAME@@".into())
        }),
        ("value", |p| {
            main_graph(p).input[0].name = Some("@@NAME@@".into())
        }),
    ];
    for (what, edit) in edits {
        let dir = scratch();
        let model = copy_fixture(&fixture("tiny/llama"), dir.path());
        let mut proto = ModelProto::decode(std::fs::read(&model).unwrap().as_slice()).unwrap();
        edit(&mut proto);
        std::fs::write(&model, with_invalid_utf8(&proto, "@@NAME@@")).unwrap();
        assert!(
            ModelProto::decode(std::fs::read(&model).unwrap().as_slice()).is_err(),
            "{what}: the edit makes the file undecodable"
        );
        refused(
            &model,
            &[],
            1,
            &["model.onnx", "not a valid ONNX model", "UTF-8"],
        );
    }
}

#[test]
fn a_model_without_graph_or_opsets_is_refused() {
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| p.graph = None);
    refused(&model, &[], 1, &["model.onnx", "holds no graph"]);
    let dir = scratch();
    let model = edited_llama(dir.path(), |p| p.opset_import.clear());
    refused(&model, &[], 1, &["model.onnx", "opset imports"]);
}

// ---------------------------------------------------------------------------------------------
// Interruptions.

/// SHA-256 of every file of a folder, by name.
fn digests(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(e.path()).unwrap();
            std::io::copy(&mut file, &mut hasher).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hasher.finalize().to_vec(),
            )
        })
        .collect()
}

/// Names of the files in a folder.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts a slow job (SmolLM2, magnitude, evaluation) writing `out`, with stage lines on stderr.
/// Every moment of [`Moment`] is followed by seconds of work even on a fast machine: pruning 106 M
/// weights, measuring the files, then two sessions over 16 windows of 256 tokens.
fn slow_job(out: &Path) -> Child {
    let fx = fixture("smollm2");
    let text = austen("persuasion");
    let flags = [
        "--sparsity",
        "0.5",
        "--prune-method",
        "magnitude",
        "--top-up",
        "uniform",
        "--eval-text",
        text.to_str().unwrap(),
        "--seqlen",
        "256",
        "--eval-windows",
        "16",
    ];
    Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"))
        .args(job(&fx.model, out, &flags))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Polls (every millisecond, for at most two minutes) until `ready` holds.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// The moments at which the slow job is interrupted: each one the job reports itself (a line on
/// stderr, a file it creates), never a time guessed in advance, so that the signal lands where it
/// is meant to on a machine of any speed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// After discovery's summary line, while the masks are computed: nothing written yet.
    Pruning,
    /// While the data file is being written under its temporary name.
    Writing,
    /// After the model and its data file were renamed into place, before the report.
    Committed,
    /// When evaluation starts (the "measure the files" stage line): sessions being created, then
    /// windows running.
    Evaluating,
}

/// Starts the slow job into `out` and returns it once `moment` is reached, with the thread that
/// collects its stderr.
fn job_at(out: &Path, moment: Moment) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = slow_job(out);
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let collector = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let data_tmp = out.with_file_name(format!(".out.onnx.data.tmp-{}", child.id()));
    let line = |what: &str, starts: &str| {
        while !rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .trim_start()
            .starts_with(starts)
        {}
    };
    match moment {
        // "  30 blocks, 210 prunable linears, …" follows discovery; the masks come next.
        Moment::Pruning => line("the discovery summary", "30 blocks"),
        Moment::Writing => wait_for("the temporary data file", || data_tmp.exists()),
        Moment::Committed => wait_for("the model", || out.exists()),
        // A stage's line is printed when it ends: this one when evaluation starts.
        Moment::Evaluating => line("the evaluation stage", "measure the files"),
    }
    (child, collector)
}

/// SIGINT, SIGTERM or SIGHUP at any point of a job leaves nothing in the output folder
/// (temporary files, model, data file, report), exits with 130 and never touches the input. Each
/// signal comes while pruning; the moments that take a whole pruning to reach get one each.
#[test]
fn an_interrupted_job_leaves_nothing_behind() {
    let fx = fixture("smollm2");
    let inputs = digests(&fx.dir);
    for (moment, sig) in [
        (Moment::Pruning, "INT"),
        (Moment::Pruning, "TERM"),
        (Moment::Pruning, "HUP"),
        (Moment::Writing, "TERM"),
        (Moment::Committed, "HUP"),
        (Moment::Evaluating, "INT"),
    ] {
        let out_dir = scratch();
        let out = out_dir.path().join("out.onnx");
        let (mut child, stderr) = job_at(&out, moment);
        signal(&child, sig);
        let status = child.wait().unwrap();
        let stderr = stderr.join().unwrap();
        let case = format!("{moment:?}, SIG{sig}");
        assert_eq!(status.code(), Some(130), "{case}: {status}; {stderr}");
        assert!(
            names(out_dir.path()).is_empty(),
            "{case}: left behind {:?}",
            names(out_dir.path())
        );
        // Other threads may still print a line after the handler's.
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(
            errors,
            ["error: interrupted; the partial output was removed"],
            "{case}: {stderr}"
        );
    }
    assert!(digests(&fx.dir) == inputs, "the input files changed");
}

/// SIGKILL cannot be handled: a job killed while writing leaves its temporary files, recognisable
/// as `.NAME.tmp-PID` with the job's process id, and never a file under an output's final name.
#[test]
fn a_killed_job_leaves_only_recognisable_temporary_files() {
    let fx = fixture("smollm2");
    let inputs = digests(&fx.dir);
    let out_dir = scratch();
    let out = out_dir.path().join("out.onnx");
    let (mut child, _) = job_at(&out, Moment::Writing);
    let suffix = format!(".tmp-{}", child.id());
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    let left = names(out_dir.path());
    assert!(
        left.contains(&format!(".out.onnx.data{suffix}")),
        "the data file's temporary name is left: {left:?}"
    );
    for name in &left {
        assert!(
            name.starts_with(".out.onnx") && name.ends_with(&suffix),
            "only temporary files are left: {left:?}"
        );
    }
    assert!(digests(&fx.dir) == inputs, "the input files changed");
}

// ---------------------------------------------------------------------------------------------
// A full disk.

/// A 64 KiB tmpfs mounted for the test's duration (the tests run as root on this project's
/// machines and in CI; elsewhere the test says why it skips); unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Result<Self, String> {
        let dir = scratch();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_naming_the_output() {
    let disk = match SmallDisk::mount() {
        Ok(disk) => disk,
        // Without a mount there is no way to fill a folder: not root, or root in a container
        // without the privilege to mount.
        Err(e) => {
            eprintln!(
                "skipped: a_full_disk_fails_cleanly_naming_the_output: cannot mount a 64 KiB tmpfs ({})",
                e.trim()
            );
            return;
        }
    };
    let fx = fixture("tiny/llama");
    let inputs = snapshot(&fx.dir);
    let out = disk.dir.path().join("out.onnx");
    let r = run(job(
        &fx.model,
        &out,
        &[
            "--sparsity",
            "0.5",
            "--prune-method",
            "magnitude",
            "--top-up",
            "uniform",
            "--quiet",
        ],
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        (1..=2).contains(&lines.len()) && lines[0].starts_with("error: "),
        "{}",
        r.stderr
    );
    for needle in [
        disk.dir.path().join("out.onnx.data").to_str().unwrap(),
        "No space left on device",
    ] {
        assert!(
            r.stderr.contains(needle),
            "mentions {needle:?}: {}",
            r.stderr
        );
    }
    assert!(
        names(disk.dir.path()).is_empty(),
        "left behind {:?}",
        names(disk.dir.path())
    );
    assert!(snapshot(&fx.dir) == inputs, "the input files changed");
}

// ---------------------------------------------------------------------------------------------
// Thread counts.

/// What a job wrote: the model and data file bytes, and the [`normalized`] report.
struct Written {
    model: Vec<u8>,
    data: Vec<u8>,
    report: Value,
}

/// Runs Wanda + NeuroAL (and an evaluation) on `tiny/llama` into `dir/out.onnx` with `threads`
/// ONNX Runtime threads and `rayon` rayon threads (`None`: the defaults).
fn threaded_job(dir: &Path, threads: Option<&str>, rayon: Option<&str>) -> Written {
    let fx = fixture("tiny/llama");
    let out = dir.join("out.onnx");
    let (calib, eval) = (austen("emma"), austen("persuasion"));
    let mut flags = vec![
        "--sparsity",
        "0.6",
        "--prune-method",
        "wanda",
        "--top-up",
        "neuroal",
        "--calib",
        calib.to_str().unwrap(),
        "--nsamples",
        "6",
        "--seqlen",
        "48",
        "--eval-text",
        eval.to_str().unwrap(),
        "--eval-windows",
        "2",
        "--quiet",
    ];
    if let Some(n) = threads {
        flags.extend(["--threads", n]);
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"));
    command.args(job(&fx.model, &out, &flags));
    match rayon {
        Some(n) => command.env("RAYON_NUM_THREADS", n),
        None => command.env_remove("RAYON_NUM_THREADS"),
    };
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.report.json")).unwrap())
            .unwrap();
    Written {
        model: std::fs::read(&out).unwrap(),
        data: std::fs::read(dir.join("out.onnx.data")).unwrap(),
        report: normalized(report, dir),
    }
}

/// A report without what may differ between equal runs: timings, peak memory, the memory budget
/// (the memory available when the job started), the command line, and the output folder in paths.
fn normalized(mut report: Value, dir: &Path) -> Value {
    fn strip(v: &mut Value, dir: &str) {
        match v {
            Value::Object(map) => {
                for key in [
                    "timings_s",
                    "peak_rss_mib",
                    "stage_peak_rss_mib",
                    "memory_budget",
                    "command_line",
                    "seconds",
                ] {
                    map.remove(key);
                }
                map.values_mut().for_each(|v| strip(v, dir));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| strip(v, dir)),
            Value::String(s) if s.contains(dir) => *s = s.replace(dir, "<out>"),
            _ => {}
        }
    }
    strip(&mut report, dir.to_str().unwrap());
    report
}

/// The same job with 1, 2 and 3 ONNX Runtime threads and 1, 3 and the default number of rayon
/// threads writes the same bytes and reports the same numbers (search scores, sparsities,
/// perplexities, digests), besides the thread counts it reports. That holds on the tiny model;
/// on SmolLM2, 16 ONNX Runtime threads against 4 change its sums and some masks (docs/gpu.md,
/// "Reproducing a model"), which is why the report gives them.
#[test]
fn thread_counts_change_no_output_byte_and_no_reported_number() {
    let runs: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("--threads 1", Some("1"), None),
        ("--threads 2", Some("2"), None),
        ("--threads 3", Some("3"), None),
        ("RAYON_NUM_THREADS=1", None, Some("1")),
        ("RAYON_NUM_THREADS=3", None, Some("3")),
        ("default threads", None, None),
    ];
    let results: Vec<(&str, Written)> = runs
        .into_iter()
        .map(|(label, threads, rayon)| {
            let dir = scratch();
            let mut run = threaded_job(dir.path(), threads, rayon);
            // The ONNX Runtime threads the report gives are the ones asked for (null: ONNX
            // Runtime chose); they alone may differ between the runs.
            let reported = run.report["onnx_runtime"]
                .as_object_mut()
                .and_then(|o| o.remove("threads"))
                .unwrap_or_else(|| panic!("{label}: no onnx_runtime.threads"));
            let asked: Value = threads.map_or(Value::Null, |n| n.parse::<u64>().unwrap().into());
            assert_eq!(reported, asked, "{label}: onnx_runtime.threads");
            run.report["search"]
                .as_object_mut()
                .and_then(|o| o.remove("threads_per_job"))
                .unwrap_or_else(|| panic!("{label}: no search.threads_per_job"));
            (label, run)
        })
        .collect();
    let (first_label, first) = &results[0];
    assert!(
        first.report["search"].is_object() && !first.report["evaluation"][0].is_null(),
        "NeuroAL searched and the models were evaluated: {}",
        first.report
    );
    for (label, run) in &results[1..] {
        assert!(
            run.model == first.model,
            "model file: {label} vs {first_label}"
        );
        assert!(
            run.data == first.data,
            "data file: {label} vs {first_label}"
        );
        assert_eq!(run.report, first.report, "report: {label} vs {first_label}");
    }
}
