//! Writing a model: the same graph with some initializers replaced, large tensors in one
//! external data file with 4 KiB-aligned offsets, written under temporary names and renamed
//! into place only when complete.

use super::model::{OnnxModel, TensorKey};
use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::{StringStringEntryProto, TensorProto};
use super::walk::visit_graphs_mut;
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use prost::bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Alignment of every tensor in the data file, so it can be memory-mapped.
const ALIGNMENT: u64 = 4096;
/// A serialized `ModelProto` may not exceed 2 GiB.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// How to lay out the written model.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// Tensors of at least this many bytes go to the external data file; smaller ones stay inline.
    pub external_threshold: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            external_threshold: 1024,
        }
    }
}

/// What [`save_model`] wrote.
#[derive(Clone, Debug)]
pub struct SavedModel {
    /// The model file.
    pub model_path: PathBuf,
    /// The external data file, when any tensor went there.
    pub data_path: Option<PathBuf>,
    /// Tensors written to the data file.
    pub external_tensors: usize,
    /// Size of the data file in bytes (with alignment padding).
    pub data_bytes: u64,
}

/// The name of the data file written next to output `out`: `out` plus `.data`.
pub fn data_file_for(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    out.with_file_name(name)
}

/// Writes `model` to `out`, with `replacements` (little-endian bytes in the tensor's own type and
/// layout) in place of the named initializers. Every other tensor's bytes are copied unchanged.
/// Nothing is left at `out` or its data file unless the whole write succeeds, and no input file
/// is ever opened for writing.
pub fn save_model(
    model: &OnnxModel,
    replacements: &HashMap<TensorKey, Vec<u8>>,
    out: &Path,
    options: &SaveOptions,
) -> Result<SavedModel> {
    let data_path = data_file_for(out);
    check_not_an_input(model, out, &data_path)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::io(
            &dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the output folder does not exist",
            ),
        ));
    }
    let data_name = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let data_tmp = AtomicFile::create(&data_path)?;
    let mut writer = BufWriter::with_capacity(1 << 20, data_tmp.file());
    let mut offset = 0u64;
    let mut external_tensors = 0usize;
    let mut proto = model.proto.clone();
    let mut failure: Option<Error> = None;
    let graph = proto.graph.as_mut().expect("checked at load");
    visit_graphs_mut(graph, &mut |graph_path, g| {
        for tensor in &mut g.initializer {
            if failure.is_some() {
                return;
            }
            let key = TensorKey {
                graph: graph_path.to_string(),
                name: tensor.name().to_string(),
            };
            let replaced = replacements.get(&key);
            let result = place_tensor(
                model,
                graph_path,
                tensor,
                replaced,
                options,
                &data_name,
                &mut writer,
                &mut offset,
            )
            .map_err(|e| match e {
                WriteError::Io(e) => Error::io(&data_path, e),
                WriteError::Other(e) => e,
            });
            match result {
                Ok(true) => external_tensors += 1,
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    writer.flush().map_err(|e| Error::io(&data_path, e))?;
    drop(writer);

    let bytes = proto.encode_to_vec();
    if bytes.len() > PROTOBUF_LIMIT {
        return Err(Error::graph(
            out,
            "the graph itself (without weights) exceeds protobuf's 2 GiB limit",
        ));
    }
    let model_tmp = AtomicFile::create(out)?;
    model_tmp
        .file()
        .write_all(&bytes)
        .map_err(|e| Error::io(out, e))?;

    let data_written = if external_tensors > 0 {
        Some(data_tmp.commit()?)
    } else {
        None // the empty temporary data file is removed on drop
    };
    model_tmp.commit()?;
    Ok(SavedModel {
        model_path: out.to_path_buf(),
        data_path: data_written,
        external_tensors,
        data_bytes: offset,
    })
}

enum WriteError {
    Io(std::io::Error),
    Other(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Other(e)
    }
}

/// Puts one initializer where it belongs in the output. Returns whether it went external.
#[allow(clippy::too_many_arguments)]
fn place_tensor(
    model: &OnnxModel,
    graph_path: &str,
    tensor: &mut TensorProto,
    replacement: Option<&Vec<u8>>,
    options: &SaveOptions,
    data_name: &str,
    writer: &mut impl Write,
    offset: &mut u64,
) -> Result<bool, WriteError> {
    if tensor.data_type() == DataType::String as i32 {
        return Ok(false); // strings have no byte layout; they stay as they are
    }
    let was_external = tensor.data_location() == DataLocation::External;
    let data: std::borrow::Cow<[u8]> = match replacement {
        Some(r) => std::borrow::Cow::Borrowed(r.as_slice()),
        None => model.tensor_bytes(graph_path, tensor)?,
    };
    if replacement.is_none() && !was_external && data.len() < options.external_threshold {
        return Ok(false); // small inline tensor: keep it exactly as it is
    }
    if data.len() < options.external_threshold {
        let inline = Bytes::copy_from_slice(&data);
        clear_data(tensor);
        tensor.raw_data = Some(inline);
        return Ok(false);
    }
    // Large tensors are streamed from where they are (often a memory map): never copied whole.
    let padding = (ALIGNMENT - *offset % ALIGNMENT) % ALIGNMENT;
    writer
        .write_all(&vec![0u8; padding as usize])
        .and_then(|_| writer.write_all(&data))
        .map_err(WriteError::Io)?;
    let length = data.len() as u64;
    *offset += padding;
    let start = *offset;
    *offset += length;
    clear_data(tensor);
    tensor.data_location = Some(DataLocation::External as i32);
    tensor.external_data = vec![
        entry("location", data_name),
        entry("offset", &start.to_string()),
        entry("length", &length.to_string()),
    ];
    Ok(true)
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

/// Removes every form of stored data from a tensor, keeping its name, type and shape.
fn clear_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
}

/// Refuses an output (or its data file) that is one of the input's files.
fn check_not_an_input(model: &OnnxModel, out: &Path, data_path: &Path) -> Result<()> {
    let inputs = model.input_files();
    for candidate in [out, data_path] {
        if let Some(resolved) = resolve_maybe_missing(candidate) {
            if let Some(hit) = inputs.iter().find(|p| **p == resolved) {
                return Err(Error::invalid(
                    "output",
                    format!(
                        "{} would overwrite input file {}; choose another output path",
                        candidate.display(),
                        hit.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The canonical form of a path whose file may not exist yet (its folder must).
fn resolve_maybe_missing(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(path.file_name()?))
}
