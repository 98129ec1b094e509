//! A loaded ONNX model: the decoded `ModelProto`, its folder and its mapped external data.

use super::dtype::{data_type_name, element_size};
use super::external::{ExternalRef, ExternalStore};
use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::{GraphProto, ModelProto, TensorProto};
use super::walk::{try_visit_attribute_tensors_mut, visit_graphs};
use crate::error::{Error, Result};
use memmap2::Mmap;
use prost::bytes::Bytes;
use prost::Message;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Identifies an initializer: the graph that holds it (see [`super::visit_graphs`]) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TensorKey {
    /// Path of the graph holding the initializer, `""` for the main graph.
    pub graph: String,
    /// The initializer's name.
    pub name: String,
}

/// An ONNX model opened for reading. Inline weights stay in the memory-mapped model file and
/// external ones in their memory-mapped data files: nothing is copied until asked for.
pub struct OnnxModel {
    /// The model file as given.
    pub path: PathBuf,
    /// The folder that external data locations are relative to.
    pub dir: PathBuf,
    /// The decoded model.
    pub proto: ModelProto,
    external: ExternalStore,
    external_refs: HashMap<TensorKey, ExternalRef>,
}

impl OnnxModel {
    /// Opens `path`, decodes it and checks every initializer: external references must stay inside
    /// the model's folder and lie inside their files, and every tensor's data must match its type
    /// and shape.
    pub fn load(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only private map of a file this tool never writes; see ExternalStore.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let not_onnx = |reason: String| Error::NotOnnx {
            path: path.to_path_buf(),
            reason,
        };
        if map.is_empty() {
            return Err(not_onnx("the file is empty".into()));
        }
        let mut proto = ModelProto::decode(Bytes::from_owner(map)).map_err(|e| {
            // prost's message would list every nested message on the way down.
            if e.to_string().ends_with("recursion limit reached") {
                not_onnx(format!(
                    "subgraphs nested more than {} levels deep, past protobuf's recursion limit",
                    super::walk::MAX_GRAPH_DEPTH
                ))
            } else {
                not_onnx(format!("protobuf decoding failed: {e}"))
            }
        })?;
        let graph = match &proto.graph {
            Some(g) if !g.node.is_empty() => g,
            _ => return Err(not_onnx("it holds no graph".into())),
        };
        if proto.ir_version() <= 0 || proto.opset_import.is_empty() {
            return Err(not_onnx("no IR version or opset imports".into()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut external = ExternalStore::new(&dir)?;
        let mut external_refs = HashMap::new();
        let mut first_error = None;
        let depth = visit_graphs(graph, &mut |graph_path, g, _| {
            if first_error.is_some() {
                return;
            }
            if let Err(e) = index_graph(graph_path, g, &mut external, &mut external_refs) {
                first_error = Some(e);
            } else if let Some(cycle) = find_cycle(g) {
                first_error = Some(Error::graph(
                    path,
                    format!(
                        "the nodes {} of graph '{}' feed each other in a cycle; an ONNX graph must be acyclic",
                        cycle.join(" → "),
                        display_graph(graph_path)
                    ),
                ));
            }
        });
        if let Err(deep) = depth {
            return Err(Error::graph(
                path,
                format!(
                    "subgraphs nested more than {} levels deep (at '{deep}'); this is not an exported LLM",
                    super::walk::MAX_GRAPH_DEPTH
                ),
            ));
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let graph = proto.graph.as_mut().expect("checked above");
        try_visit_attribute_tensors_mut(graph, &mut |label, tensor| {
            inline_external(label, tensor, &mut external)
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            proto,
            external,
            external_refs,
        })
    }

    /// The version of the default ONNX domain the model imports (1 when it names none).
    pub fn default_opset(&self) -> i64 {
        default_opset(&self.proto)
    }

    /// The main graph (present: checked by [`Self::load`]).
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// The little-endian bytes of an initializer's data, wherever it is stored: `raw_data`, the
    /// typed fields, or an external file. `graph` is the path of the graph holding it. External
    /// bytes are read through the memory map and their pages released when the result is dropped.
    pub fn tensor_bytes<'a>(
        &'a self,
        graph: &str,
        tensor: &'a TensorProto,
    ) -> Result<TensorBytes<'a>> {
        if tensor.data_location() == DataLocation::External {
            let key = TensorKey {
                graph: graph.to_string(),
                name: tensor.name().to_string(),
            };
            let r = self.external_refs.get(&key).ok_or_else(|| {
                Error::tensor(tensor.name(), "external data was not indexed at load")
            })?;
            return Ok(TensorBytes {
                bytes: Cow::Borrowed(self.external.bytes(r)),
                mapped: Some((&self.external, r)),
            });
        }
        Ok(TensorBytes {
            bytes: inline_bytes(tensor)?,
            mapped: None,
        })
    }

    /// The initializer identified by `key`, searching the graph at `key.graph`.
    pub fn initializer(&self, key: &TensorKey) -> Option<&TensorProto> {
        let mut found = None;
        let _ = visit_graphs(self.graph(), &mut |path, g, _| {
            if found.is_none() && path == key.graph {
                found = g.initializer.iter().find(|t| t.name() == key.name);
            }
        });
        found
    }

    /// Canonical paths of all files this model reads: the model, then its external data files.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut data: Vec<PathBuf> = self.external.paths().map(Path::to_path_buf).collect();
        data.sort();
        self.path
            .canonicalize()
            .ok()
            .into_iter()
            .chain(data)
            .collect()
    }
}

/// An initializer's bytes, borrowed from the model where they can be. Bytes read from an external
/// data file give their pages back to the kernel when dropped (see [`ExternalStore::release`]):
/// the resident memory of a job that reads a model tensor by tensor stays near one tensor, not
/// the whole file.
pub struct TensorBytes<'a> {
    bytes: Cow<'a, [u8]>,
    mapped: Option<(&'a ExternalStore, &'a ExternalRef)>,
}

impl std::ops::Deref for TensorBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for TensorBytes<'_> {
    fn drop(&mut self) {
        if let Some((store, r)) = self.mapped {
            store.release(r);
        }
    }
}

/// Reads a node attribute's tensor that an external-data writer moved to a data file (onnx's
/// `convert_attribute=True` does this to `Constant` and `ConstantOfShape` values) and stores it
/// inline. ONNX Runtime resolves such references against the working directory when a model is
/// built in memory, and an output would keep pointing at the input's data file: inline, no model
/// made from this one depends on either (docs/onnx-layouts.md, "External data").
fn inline_external(
    label: &str,
    tensor: &mut TensorProto,
    external: &mut ExternalStore,
) -> Result<()> {
    if tensor.data_location() != DataLocation::External {
        return Ok(());
    }
    let entries: Vec<(String, String)> = tensor
        .external_data
        .iter()
        .map(|e| (e.key().to_string(), e.value().to_string()))
        .collect();
    let r = external.register(label, &entries, expected_bytes(tensor)?)?;
    let bytes = Bytes::copy_from_slice(external.bytes(&r));
    external.release(&r);
    clear_data(tensor);
    tensor.raw_data = Some(bytes);
    Ok(())
}

/// Removes every form of stored data from a tensor, keeping its name, type and shape.
/// The version of the default ONNX domain `proto` imports (1 when it names none).
pub fn default_opset(proto: &ModelProto) -> i64 {
    proto
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("" | "ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(1)
}

pub(crate) fn clear_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
}

/// Checks the initializers of one graph and registers its external references.
fn index_graph(
    graph_path: &str,
    graph: &GraphProto,
    external: &mut ExternalStore,
    refs: &mut HashMap<TensorKey, ExternalRef>,
) -> Result<()> {
    let mut seen = HashSet::new();
    for tensor in &graph.initializer {
        let name = tensor.name();
        if !seen.insert(name) {
            return Err(Error::tensor(
                name,
                format!(
                    "is defined twice as an initializer of graph '{}'; the model is malformed",
                    display_graph(graph_path)
                ),
            ));
        }
        let expected = expected_bytes(tensor)?;
        if tensor.data_location() == DataLocation::External {
            let entries: Vec<(String, String)> = tensor
                .external_data
                .iter()
                .map(|e| (e.key().to_string(), e.value().to_string()))
                .collect();
            let r = external.register(name, &entries, expected)?;
            refs.insert(
                TensorKey {
                    graph: graph_path.to_string(),
                    name: name.to_string(),
                },
                r,
            );
        } else if let Some(expected) = expected {
            let actual = inline_len(tensor)?;
            if actual as u64 != expected {
                return Err(Error::tensor(
                    name,
                    format!(
                        "holds {actual} bytes of {} data but its shape {:?} needs {expected}",
                        data_type_name(tensor.data_type()),
                        tensor.dims
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The labels of the nodes on one cycle of `graph`'s dataflow, producer first and the first
/// repeated at the end, if there is one. Kahn's algorithm leaves the nodes on or behind a cycle;
/// walking back from one of them through such producers must come round to a node on a cycle.
fn find_cycle(graph: &GraphProto) -> Option<Vec<String>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o, i);
        }
    }
    let inputs = |i: usize| {
        graph.node[i]
            .input
            .iter()
            .filter_map(|name| producer.get(name.as_str()).copied())
    };
    let mut waiting: Vec<usize> = (0..graph.node.len()).map(|i| inputs(i).count()).collect();
    let mut consumers = vec![Vec::new(); graph.node.len()];
    for i in 0..graph.node.len() {
        inputs(i).for_each(|p| consumers[p].push(i));
    }
    let mut ready: Vec<usize> = (0..waiting.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        for &c in &consumers[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    let mut at = waiting.iter().position(|&w| w > 0)?;
    let mut seen = vec![false; waiting.len()];
    while !seen[at] {
        seen[at] = true;
        at = inputs(at).find(|&p| waiting[p] > 0)?;
    }
    // `at` is on the cycle that the same walk goes round: follow it once, then list it in
    // dataflow order.
    let label = |i: usize| format!("'{}'", super::walk::node_label(&graph.node[i]));
    let mut cycle = vec![label(at)];
    let start = at;
    loop {
        at = inputs(at).find(|&p| waiting[p] > 0)?;
        cycle.push(label(at));
        if at == start {
            cycle.reverse();
            return Some(cycle);
        }
    }
}

/// Human name of a graph path.
pub(crate) fn display_graph(path: &str) -> &str {
    if path.is_empty() {
        "main"
    } else {
        path
    }
}

/// Number of elements of a tensor, with overflow and negative dims refused.
pub(crate) fn numel(tensor: &TensorProto) -> Result<u64> {
    tensor.dims.iter().try_fold(1u64, |acc, &d| {
        u64::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| {
                Error::tensor(
                    tensor.name(),
                    format!("has an impossible shape {:?}", tensor.dims),
                )
            })
    })
}

/// Byte size the tensor's type and shape call for (`None` for strings and sub-byte types).
fn expected_bytes(tensor: &TensorProto) -> Result<Option<u64>> {
    let n = numel(tensor)?;
    Ok(match element_size(tensor.data_type()) {
        Some(size) => Some(n.checked_mul(size as u64).ok_or_else(|| {
            Error::tensor(
                tensor.name(),
                format!("has an impossible shape {:?}", tensor.dims),
            )
        })?),
        None => None,
    })
}

/// Byte length of inline data, without materialising typed fields.
fn inline_len(tensor: &TensorProto) -> Result<usize> {
    if tensor.raw_data.is_some() {
        return Ok(tensor.raw_data().len());
    }
    Ok(inline_bytes(tensor)?.len())
}

/// Little-endian bytes of inline tensor data (`raw_data` or the typed fields).
fn inline_bytes(tensor: &TensorProto) -> Result<Cow<'_, [u8]>> {
    if tensor.raw_data.is_some() {
        return Ok(Cow::Borrowed(tensor.raw_data()));
    }
    let dt = DataType::try_from(tensor.data_type()).unwrap_or(DataType::Undefined);
    let mut out = Vec::new();
    match dt {
        DataType::Float | DataType::Complex64 => tensor
            .float_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Double | DataType::Complex128 => tensor
            .double_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Int64 => tensor
            .int64_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint64 | DataType::Uint32 => {
            for v in &tensor.uint64_data {
                if dt == DataType::Uint32 {
                    out.extend_from_slice(&(*v as u32).to_le_bytes());
                } else {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        DataType::Int32 => tensor
            .int32_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16 => tensor
            .int32_data
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes())),
        DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            tensor.int32_data.iter().for_each(|v| out.push(*v as u8))
        }
        _ => {
            return Err(Error::tensor(
                tensor.name(),
                format!(
                    "stores {} data inline in a form neuroal-onnx does not read",
                    data_type_name(tensor.data_type())
                ),
            ))
        }
    }
    Ok(Cow::Owned(out))
}
