//! The files onnxruntime-genai reads beside a model: `genai_config.json`, the tokenizer and the
//! chat template. A pruned model written to another folder gets copies, so that the output folder
//! can be served as the input folder was (docs/onnx-layouts.md,
//! "onnxruntime-genai").

use crate::atomic::Job;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// onnxruntime-genai's configuration, which names the decoder's model file.
pub const GENAI_CONFIG: &str = "genai_config.json";

/// Files copied when present, besides [`GENAI_CONFIG`]: what tokenizers and runtimes read next to
/// an exported model.
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "config.json",
];

/// A companion file to write beside the output.
pub struct Companion {
    /// Where it goes.
    pub target: PathBuf,
    bytes: Vec<u8>,
}

/// The companion files of the model `input` to write beside `output`: none unless `input` lies in
/// an onnxruntime-genai folder (one with `genai_config.json`) and `output` in another folder.
/// `genai_config.json` is rewritten to name the output's file; a configuration whose decoder is
/// another file than `input` describes a multi-model folder and is refused.
pub fn companions(input: &Path, output: &Path) -> Result<Vec<Companion>> {
    let in_dir = folder(input);
    let out_dir = folder(output);
    let config_path = in_dir.join(GENAI_CONFIG);
    let canonical = |dir: &Path| dir.canonicalize().map_err(|e| Error::io(dir, e));
    if !config_path.is_file() || canonical(&in_dir)? == canonical(&out_dir)? {
        return Ok(Vec::new());
    }
    let mut found = vec![Companion {
        target: out_dir.join(GENAI_CONFIG),
        bytes: genai_config_for(&config_path, input, output)?,
    }];
    for name in COPIED {
        let source = in_dir.join(name);
        if source.is_file() {
            let bytes = std::fs::read(&source).map_err(|e| Error::io(&source, e))?;
            found.push(Companion {
                target: out_dir.join(name),
                bytes,
            });
        }
    }
    Ok(found)
}

impl Companion {
    /// Writes the file atomically as an output of `job` (replacing one of an earlier run).
    pub fn write(&self, job: &Job) -> Result<()> {
        job.write(&self.target, &self.bytes)
    }
}

/// `genai_config.json` with `model.decoder.filename` set to the output's file name.
fn genai_config_for(config_path: &Path, input: &Path, output: &Path) -> Result<Vec<u8>> {
    let bad = |message: String| Error::graph(config_path, message);
    let text = std::fs::read_to_string(config_path).map_err(|e| Error::io(config_path, e))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not valid JSON ({e}); fix or remove it")))?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let decoder = json
        .get_mut("model")
        .and_then(|m| m.get_mut("decoder"))
        .and_then(|d| d.as_object_mut())
        .ok_or_else(|| bad("has no model.decoder section".into()))?;
    let named = decoder
        .get("filename")
        .and_then(|f| f.as_str())
        .unwrap_or_default();
    if named != file_name(input) {
        return Err(bad(format!(
            "its decoder is '{named}', not the model being pruned ('{}'); prune that file, or write the output into the input's folder",
            file_name(input)
        )));
    }
    decoder.insert(
        "filename".to_string(),
        serde_json::Value::String(file_name(output)),
    );
    let mut bytes = serde_json::to_vec_pretty(&json)
        .map_err(|e| Error::internal(format!("genai_config.json cannot be written: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
