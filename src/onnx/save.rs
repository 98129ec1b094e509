//! Writing a model: the same graph with some initializers replaced, large tensors in one
//! external data file with 4 KiB-aligned offsets, written under temporary names and renamed
//! into place only when complete.

use super::model::{clear_data, OnnxModel, TensorKey};
use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};
use super::walk::{try_visit_attribute_tensors_mut, visit_graphs_mut};
use crate::atomic::{AtomicFile, Job};
use crate::error::{Error, Result};
use prost::bytes::Bytes;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::fs::File;
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

/// Where a tensor handed to [`ModelWriter::put`] went.
enum Placed {
    /// In the data file, at this offset and length.
    External { offset: u64, length: u64 },
    /// Too small for the data file: stored in the model file.
    Inline(Bytes),
}

/// A node that applies a weight, as found in the written graph: the graph holding it (its path),
/// its name, and its first two inputs (the activation and the weight operand), which identify it
/// even where an exporter left names empty.
#[derive(Clone, Debug)]
pub struct NodeAt {
    /// Path of the graph holding the node (`""` for the main graph).
    pub graph: String,
    /// The node's name.
    pub name: String,
    /// Its first input, the one reordered.
    pub input: String,
    /// Its second input.
    pub operand: String,
}

/// A weight whose nodes read their first input through a `Gather` that reorders its last axis.
struct Reordered {
    weight: TensorKey,
    /// The int64 initializer holding the order, beside the weight.
    order_name: String,
    order: Vec<u32>,
    /// Each node, and the name of the reordered value it reads instead of its first input.
    nodes: Vec<(NodeAt, String)>,
}

/// The output model being written: the same graph with some initializers replaced, large tensors
/// in one external data file.
///
/// Replacements stream into the data file as they are handed over ([`Self::put`]), so a job that
/// prunes matrix after matrix never holds more than one. [`Self::finish`] then copies every other
/// tensor from the input and writes the model file. Nothing appears at `out` or its data file
/// unless the whole write succeeds, and no input file is ever opened for writing.
pub struct ModelWriter<'m> {
    model: &'m OnnxModel,
    out: PathBuf,
    data_path: PathBuf,
    /// The data file's name as the model file refers to it.
    data_name: String,
    options: SaveOptions,
    data_tmp: AtomicFile,
    /// The job the written files belong to, if any.
    job: Option<&'m Job>,
    writer: BufWriter<File>,
    /// Bytes written to the data file so far, padding included.
    offset: u64,
    placed: HashMap<TensorKey, Placed>,
    reordered: Vec<Reordered>,
}

impl<'m> ModelWriter<'m> {
    /// Starts the output of `model` at `out` (data file: [`data_file_for`]`(out)`), refusing an
    /// output that is one of the input's files or lies in a folder that does not exist.
    pub fn create(model: &'m OnnxModel, out: &Path, options: &SaveOptions) -> Result<Self> {
        let data_path = data_file_for(out);
        check_not_an_input(model, out)?;
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
        let file = data_tmp
            .file()
            .try_clone()
            .map_err(|e| Error::io(&data_path, e))?;
        Ok(Self {
            model,
            out: out.to_path_buf(),
            data_path,
            data_name,
            options: options.clone(),
            data_tmp,
            job: None,
            writer: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            placed: HashMap::new(),
            reordered: Vec::new(),
        })
    }

    /// Commits the model and data files as outputs of `job`, which removes them again if it
    /// fails or is interrupted before it is kept.
    pub fn owned_by(mut self, job: &'m Job) -> Self {
        self.job = Some(job);
        self
    }

    /// Replaces initializer `key` with `bytes` (little-endian, in the tensor's own type and
    /// layout), written to the data file now when large enough.
    pub fn put(&mut self, key: &TensorKey, bytes: &[u8]) -> Result<()> {
        let placed = if bytes.len() < self.options.external_threshold {
            Placed::Inline(Bytes::copy_from_slice(bytes))
        } else {
            let offset = self
                .append(bytes)
                .map_err(|e| Error::io(&self.data_path, e))?;
            Placed::External {
                offset,
                length: bytes.len() as u64,
            }
        };
        if self.placed.insert(key.clone(), placed).is_some() {
            return Err(Error::internal(format!(
                "tensor '{}' was replaced twice in one output",
                key.name
            )));
        }
        Ok(())
    }

    /// Makes each of `nodes` (the nodes applying `weight`) read its first input with the last
    /// axis in `order` (position `q` takes element `order[q]`): a `Gather` on axis −1 before each
    /// node, its indices an int64 initializer beside the weight. Returns that initializer's name.
    /// The nodes are found when the model is written; one that is not there fails the write.
    pub fn reorder_input(
        &mut self,
        weight: &TensorKey,
        nodes: &[NodeAt],
        order: &[u32],
    ) -> Result<String> {
        if self.reordered.iter().any(|r| r.weight == *weight) {
            return Err(Error::internal(format!(
                "the input of '{}' was reordered twice in one output",
                weight.name
            )));
        }
        let order_name = format!("{}/input_order", weight.name);
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| (n.clone(), format!("{}/reordered_input_{k}", weight.name)))
            .collect();
        self.reordered.push(Reordered {
            weight: weight.clone(),
            order_name: order_name.clone(),
            order: order.to_vec(),
            nodes,
        });
        Ok(order_name)
    }

    /// Adds every reordering's initializer and `Gather` nodes to `proto`, after checking that the
    /// names they bring are free in every graph (ONNX forbids a subgraph to shadow a name).
    fn add_reorderings(&self, proto: &mut ModelProto) -> Result<()> {
        if self.reordered.is_empty() {
            return Ok(());
        }
        let graph = proto.graph.as_mut().expect("checked at load");
        let mut taken: HashSet<String> = HashSet::new();
        visit_graphs_mut(graph, &mut |_, g| {
            let outputs = g.node.iter().flat_map(|n| n.output.iter());
            let values = g.initializer.iter().map(|t| t.name());
            let inputs = g.input.iter().map(|i| i.name());
            taken.extend(
                outputs
                    .map(String::as_str)
                    .chain(values)
                    .chain(inputs)
                    .map(str::to_string),
            );
        });
        for r in &self.reordered {
            let new = std::iter::once(&r.order_name).chain(r.nodes.iter().map(|(_, v)| v));
            if let Some(name) = new.into_iter().find(|n| taken.contains(*n)) {
                return Err(Error::graph(
                    &self.out,
                    format!("cannot reorder the input of '{}': the model already has a value named '{name}'", r.weight.name),
                ));
            }
        }
        let mut failure: Option<Error> = None;
        visit_graphs_mut(graph, &mut |path, g| {
            for r in &self.reordered {
                if failure.is_some() {
                    return;
                }
                if r.weight.graph == path {
                    g.initializer.push(order_tensor(&r.order_name, &r.order));
                }
                for (node, value) in r.nodes.iter().filter(|(n, _)| n.graph == path) {
                    if let Err(e) = insert_gather(g, node, &r.order_name, value) {
                        failure = Some(Error::graph(
                            &self.out,
                            format!("cannot reorder the input of '{}': {e}", r.weight.name),
                        ));
                        return;
                    }
                }
            }
        });
        failure.map_or(Ok(()), Err)
    }

    /// Copies every initializer not replaced from the input, writes the model file, and renames
    /// both files into place.
    pub fn finish(mut self) -> Result<SavedModel> {
        let mut proto = self.model.proto.clone();
        self.add_reorderings(&mut proto)?;
        let mut external_tensors = 0usize;
        let mut replaced = 0usize;
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
                let result = match self.placed.get(&key) {
                    Some(placed) => {
                        replaced += 1;
                        Ok(self.point_at(tensor, placed))
                    }
                    None => self.copy_tensor(graph_path, tensor),
                };
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
        if replaced != self.placed.len() {
            return Err(Error::internal(format!(
                "{}: a replacement names no initializer of the model",
                self.out.display()
            )));
        }
        self.writer
            .flush()
            .map_err(|e| Error::io(&self.data_path, e))?;
        let data_len = self
            .data_tmp
            .file()
            .metadata()
            .map_err(|e| Error::io(&self.data_path, e))?
            .len();
        check_external_references(&mut proto, &self.data_name, data_len)?;

        let bytes = proto.encode_to_vec();
        if bytes.len() > PROTOBUF_LIMIT {
            return Err(Error::graph(
                &self.out,
                "the graph itself (without weights) exceeds protobuf's 2 GiB limit",
            ));
        }
        let model_tmp = AtomicFile::create(&self.out)?;
        model_tmp
            .file()
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.out, e))?;

        let commit = |file: AtomicFile| match self.job {
            Some(job) => job.commit(file),
            None => file.commit(),
        };
        let data_written = if external_tensors > 0 {
            Some(commit(self.data_tmp)?)
        } else {
            None // the empty temporary data file is removed on drop
        };
        commit(model_tmp)?;
        Ok(SavedModel {
            model_path: self.out,
            data_path: data_written,
            external_tensors,
            data_bytes: self.offset,
        })
    }

    /// Appends `data` to the data file at the next aligned offset, returning that offset.
    fn append(&mut self, data: &[u8]) -> std::io::Result<u64> {
        let padding = (ALIGNMENT - self.offset % ALIGNMENT) % ALIGNMENT;
        self.writer.write_all(&vec![0u8; padding as usize])?;
        self.writer.write_all(data)?;
        let start = self.offset + padding;
        self.offset = start + data.len() as u64;
        Ok(start)
    }

    /// Points `tensor` at its replacement. Returns whether it is external.
    fn point_at(&self, tensor: &mut TensorProto, placed: &Placed) -> bool {
        clear_data(tensor);
        match placed {
            Placed::Inline(bytes) => {
                tensor.raw_data = Some(bytes.clone());
                false
            }
            Placed::External { offset, length } => {
                tensor.data_location = Some(DataLocation::External as i32);
                tensor.external_data = vec![
                    entry("location", &self.data_name),
                    entry("offset", &offset.to_string()),
                    entry("length", &length.to_string()),
                ];
                true
            }
        }
    }

    /// Copies an initializer that was not replaced: small inline tensors stay exactly as they
    /// are, everything else goes to the data file. Returns whether it is external.
    fn copy_tensor(&mut self, graph_path: &str, tensor: &mut TensorProto) -> Result<bool> {
        if tensor.data_type() == DataType::String as i32 {
            return Ok(false); // strings have no byte layout; they stay as they are
        }
        let was_external = tensor.data_location() == DataLocation::External;
        let model = self.model;
        // Streamed from where it is (often the memory map, released after): never copied whole.
        let data = model.tensor_bytes(graph_path, tensor)?;
        if data.len() < self.options.external_threshold {
            if was_external {
                let inline = Bytes::copy_from_slice(&data);
                drop(data);
                clear_data(tensor);
                tensor.raw_data = Some(inline);
            }
            return Ok(false);
        }
        let offset = self
            .append(&data)
            .map_err(|e| Error::io(&self.data_path, e))?;
        let placed = Placed::External {
            offset,
            length: data.len() as u64,
        };
        drop(data);
        Ok(self.point_at(tensor, &placed))
    }
}

/// An int64 `[len]` initializer holding `order`.
fn order_tensor(name: &str, order: &[u32]) -> TensorProto {
    let raw: Vec<u8> = order
        .iter()
        .flat_map(|&i| i64::from(i).to_le_bytes())
        .collect();
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(DataType::Int64 as i32),
        dims: vec![order.len() as i64],
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

/// Puts `Gather(input, order, axis=-1) → value` before the node `node` names in `graph` and
/// makes the node read `value` instead of its first input.
fn insert_gather(
    graph: &mut GraphProto,
    node: &NodeAt,
    order: &str,
    value: &str,
) -> std::result::Result<(), String> {
    let found: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.name() == node.name
                && n.input.first().map(String::as_str) == Some(&node.input)
                && n.input.get(1).map(String::as_str) == Some(&node.operand)
        })
        .map(|(i, _)| i)
        .collect();
    let [at] = found[..] else {
        return Err(format!(
            "{} nodes named '{}' read '{}' and '{}' in graph '{}'; expected one",
            found.len(),
            node.name,
            node.input,
            node.operand,
            node.graph
        ));
    };
    let name = if node.name.is_empty() {
        format!("{value}/Gather")
    } else {
        format!("{}/ReorderInput", node.name)
    };
    let gather = NodeProto {
        name: Some(name),
        op_type: Some("Gather".to_string()),
        input: vec![node.input.clone(), order.to_string()],
        output: vec![value.to_string()],
        attribute: vec![AttributeProto {
            name: Some("axis".to_string()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(-1),
            ..Default::default()
        }],
        ..Default::default()
    };
    graph.node[at].input[0] = value.to_string();
    graph.node.insert(at, gather);
    Ok(())
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

/// Checks every external reference of a model about to be written, initializers and node
/// attributes in every graph: each must name `data_name` (the data file written beside the model)
/// and lie inside its `data_len` bytes. A reference that would dangle names its tensor, and the
/// model is not written.
pub(crate) fn check_external_references(
    proto: &mut ModelProto,
    data_name: &str,
    data_len: u64,
) -> Result<()> {
    let check = |label: &str, tensor: &TensorProto| -> Result<()> {
        if tensor.data_location() != DataLocation::External {
            return Ok(());
        }
        let value = |key: &str| {
            tensor
                .external_data
                .iter()
                .find(|e| e.key() == key)
                .map(|e| e.value().to_string())
        };
        let location = value("location").unwrap_or_default();
        let bad = |message: String| Error::ExternalData {
            tensor: label.to_string(),
            location: PathBuf::from(&location),
            message: format!(
                "{message} (an internal error; nothing was written, please report it)"
            ),
        };
        if location != data_name {
            return Err(bad(format!(
                "the output would refer to a file other than its own data file '{data_name}'"
            )));
        }
        let number = |key: &str| value(key).and_then(|v| v.trim().parse::<u64>().ok());
        match (number("offset").or(Some(0)), number("length")) {
            (Some(offset), Some(length)) if offset.checked_add(length).is_some_and(|end| end <= data_len) => Ok(()),
            (offset, length) => Err(bad(format!(
                "offset {offset:?} and length {length:?} do not lie inside the {data_len}-byte data file"
            ))),
        }
    };
    let graph = proto.graph.as_mut().expect("checked at load");
    let mut failure = None;
    visit_graphs_mut(graph, &mut |_, g| {
        for tensor in &g.initializer {
            if failure.is_none() {
                failure = check(tensor.name(), tensor).err();
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    try_visit_attribute_tensors_mut(graph, &mut |label, tensor| check(label, tensor))
}

/// Refuses an output `out` (or its data file, [`data_file_for`]) that is one of `model`'s files
/// ([`OnnxModel::input_files`]), as a usage error naming both. The pipeline checks this as soon
/// as the model is loaded, before any other work; [`ModelWriter::create`] relies on the same check.
pub fn check_not_an_input(model: &OnnxModel, out: &Path) -> Result<()> {
    let inputs = model.input_files();
    for candidate in [out, &data_file_for(out)] {
        if let Some(resolved) = resolve_maybe_missing(candidate) {
            if let Some(hit) = inputs.iter().find(|p| **p == resolved) {
                let what = if candidate == out && model.path.canonicalize().ok() == Some(resolved) {
                    "is the input model".to_string()
                } else {
                    format!("would overwrite input file {}", hit.display())
                };
                return Err(Error::invalid(
                    "output",
                    format!("{} {what}; choose another output path", candidate.display()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto};

    fn external(location: &str, offset: u64, length: u64) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            dims: vec![length as i64 / 4],
            data_type: Some(DataType::Float as i32),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                entry("location", location),
                entry("offset", &offset.to_string()),
                entry("length", &length.to_string()),
            ],
            ..Default::default()
        }
    }

    /// A model whose `Constant` node holds `value` and whose graph holds `initializer`.
    fn model(value: TensorProto, initializer: TensorProto) -> ModelProto {
        let constant = NodeProto {
            name: Some("/model/Constant_3".into()),
            op_type: Some("Constant".into()),
            output: vec!["c".into()],
            attribute: vec![AttributeProto {
                name: Some("value".into()),
                t: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                node: vec![constant],
                initializer: vec![initializer],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn unnamed(mut t: TensorProto) -> TensorProto {
        t.name = None;
        t
    }

    #[test]
    fn references_inside_the_own_data_file_pass() {
        let mut m = model(
            unnamed(external("out.onnx.data", 4096, 16)),
            external("out.onnx.data", 0, 4096),
        );
        check_external_references(&mut m, "out.onnx.data", 4112).unwrap();
    }

    #[test]
    fn an_attribute_pointing_at_the_input_data_file_is_named() {
        let mut m = model(
            unnamed(external("model.onnx_data", 0, 16)),
            external("out.onnx.data", 0, 16),
        );
        let e = check_external_references(&mut m, "out.onnx.data", 4096)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node '/model/Constant_3' attribute 'value'"),
            "{e}"
        );
        assert!(e.contains("model.onnx_data"), "{e}");
    }

    #[test]
    fn an_initializer_past_the_end_of_the_data_file_is_named() {
        let mut m = model(TensorProto::default(), external("out.onnx.data", 4096, 16));
        let e = check_external_references(&mut m, "out.onnx.data", 4100)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tensor 'w'"), "{e}");
        assert!(e.contains("4100-byte"), "{e}");
    }
}
