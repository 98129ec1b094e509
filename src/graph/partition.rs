//! Partition of a decoder into stages: a prefix (embedding, masks, rotary tables), one stage per
//! decoder block, and a suffix (final norm, LM head). Each stage becomes a self-contained ONNX
//! model whose inputs are the tensors other stages produce (the hidden state and shared
//! auxiliary tensors), so that blocks can be run one at a time on calibration data.
//!
//! Merged decoders (`If` on `use_cache_branch`) are flattened to their no-cache branch first.

use super::discover::{Discovery, Linear};
use super::naming::module_path;
use crate::error::{Error, Result};
use crate::onnx::proto::{
    GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use crate::onnx::{subgraphs, OnnxModel, TensorKey};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Nodes appended to a stage model (for example statistics taken inside it), with the
/// initializers they read and the outputs they add after the stage's own.
#[derive(Clone, Debug, Default)]
pub struct StageProbe {
    /// The nodes, run after the stage's.
    pub nodes: Vec<NodeProto>,
    /// The initializers they read.
    pub initializers: Vec<TensorProto>,
    /// The outputs they add.
    pub outputs: Vec<String>,
}

/// What part of the decoder a stage is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Everything before the first block.
    Prefix,
    /// One decoder block (its index as in the model's names).
    Block(usize),
    /// Everything after the last block.
    Suffix,
}

/// One stage: its nodes and the tensors that cross its boundary.
#[derive(Clone, Debug)]
pub struct Stage {
    /// What it is.
    pub kind: StageKind,
    /// Indices into [`Partition::nodes`], in graph order.
    pub nodes: Vec<usize>,
    /// Tensors it reads that graph inputs or earlier stages provide.
    pub inputs: Vec<String>,
    /// Tensors it produces that later stages read (for the suffix: the graph outputs it produces).
    pub outputs: Vec<String>,
}

/// A decoder cut into stages.
pub struct Partition {
    /// The decoder's nodes (the no-cache branch of a merged decoder, flattened).
    pub nodes: Vec<NodeProto>,
    /// Prefix, blocks in order, suffix.
    pub stages: Vec<Stage>,
    /// The graph's runtime inputs (without `use_cache_branch` for a flattened merged decoder).
    pub graph_inputs: Vec<ValueInfoProto>,
    initializers: HashMap<String, TensorKey>,
    template: ModelProto,
}

impl Partition {
    /// Cuts `model` into stages, using `discovery` to know which blocks exist.
    pub fn new(model: &OnnxModel, discovery: &Discovery) -> Result<Self> {
        let graph = model.graph();
        let Flattened {
            nodes,
            mut initializers,
            removed_input,
        } = flatten_merged(graph)?;
        for t in &graph.initializer {
            initializers.insert(
                t.name().to_string(),
                TensorKey {
                    graph: String::new(),
                    name: t.name().to_string(),
                },
            );
        }
        let graph_inputs: Vec<ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| {
                !initializers.contains_key(i.name()) && Some(i.name()) != removed_input.as_deref()
            })
            .cloned()
            .collect();
        let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();

        // Stage of each node: its block from its name, else from dataflow.
        let blocks: BTreeSet<usize> = discovery.linears.iter().map(|l| l.block).collect();
        let block_stage: HashMap<usize, usize> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, i + 1))
            .collect();
        let suffix = blocks.len() + 1;
        let node_inputs: Vec<Vec<String>> = nodes.iter().map(all_inputs).collect();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
        }
        let named: Vec<Option<usize>> = nodes
            .iter()
            .map(|n| {
                module_path(n, "")
                    .and_then(|p| p.block)
                    .and_then(|b| block_stage.get(&b).copied())
            })
            .collect();
        let producers_of = |i: usize| {
            node_inputs[i]
                .iter()
                .filter_map(|n| producer.get(n.as_str()).copied())
                .filter(move |&p| p < i)
        };
        // Nodes that read only initializers (constants, a transposed tied embedding) are run
        // where they are needed, instead of being carried for every window.
        let graph_input_names: HashSet<&str> = graph_inputs.iter().map(|i| i.name()).collect();
        let mut data_dependent = vec![false; nodes.len()];
        for i in 0..nodes.len() {
            data_dependent[i] = named[i].is_some()
                || node_inputs[i]
                    .iter()
                    .any(|n| graph_input_names.contains(n.as_str()))
                || producers_of(i).any(|p| data_dependent[p]);
        }
        // A named node runs in its block; any other node as soon as what it reads is ready.
        let mut stage_of = vec![0usize; nodes.len()];
        for i in 0..nodes.len() {
            let ready = producers_of(i).map(|p| stage_of[p]).max().unwrap_or(0);
            stage_of[i] = named[i].unwrap_or(ready);
        }
        // Unnamed nodes after the last block that no block needs (final norm, LM head) form the
        // suffix, with everything that reads them.
        let mut needed_by_block = vec![false; nodes.len()];
        for i in (0..nodes.len()).rev() {
            needed_by_block[i] |= named[i].is_some();
            if needed_by_block[i] {
                for p in producers_of(i).collect::<Vec<_>>() {
                    needed_by_block[p] = true;
                }
            }
        }
        for i in 0..nodes.len() {
            let after_suffix = producers_of(i).any(|p| data_dependent[p] && stage_of[p] == suffix);
            let tail = stage_of[i] == suffix - 1 && !needed_by_block[i];
            if named[i].is_none() && data_dependent[i] && (after_suffix || tail) {
                stage_of[i] = suffix;
            }
        }
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for i in 0..nodes.len() {
            for p in producers_of(i).collect::<Vec<_>>() {
                consumers[p].push(i);
            }
        }
        for i in (0..nodes.len()).rev() {
            if !data_dependent[i] {
                stage_of[i] = consumers[i]
                    .iter()
                    .map(|&c| stage_of[c])
                    .min()
                    .unwrap_or(suffix);
            }
        }

        // Boundaries and checks.
        let mut stages: Vec<Stage> = (0..=suffix)
            .map(|s| Stage {
                kind: if s == 0 {
                    StageKind::Prefix
                } else if s == suffix {
                    StageKind::Suffix
                } else {
                    StageKind::Block(*blocks.iter().nth(s - 1).expect("stage index"))
                },
                nodes: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            })
            .collect();
        let mut last_reader: HashMap<String, usize> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let s = stage_of[i];
            stages[s].nodes.push(i);
            for input in &node_inputs[i] {
                if initializers.contains_key(input) && !producer.contains_key(input.as_str()) {
                    continue;
                }
                match producer.get(input.as_str()) {
                    Some(&p) if stage_of[p] == s => {}
                    Some(&p) if stage_of[p] > s => {
                        return Err(Error::graph(
                            &model.path,
                            format!(
                                "cannot cut the graph into blocks: node '{}' (stage {s}) reads '{input}' which node '{}' of a later stage produces",
                                node.name(),
                                nodes[p].name()
                            ),
                        ));
                    }
                    Some(_) => {
                        push_unique(&mut stages[s].inputs, input);
                        let last = last_reader.entry(input.clone()).or_insert(s);
                        *last = (*last).max(s);
                    }
                    None if graph_input_names.contains(input.as_str()) => {
                        push_unique(&mut stages[s].inputs, input)
                    }
                    None => {
                        return Err(Error::graph(
                            &model.path,
                            format!(
                                "node '{}' reads '{input}', which nothing produces",
                                node.name()
                            ),
                        ))
                    }
                }
            }
        }
        for (name, &p) in &producer {
            let s = stage_of[p];
            if last_reader.get(*name).is_some_and(|&r| r > s)
                || (s == suffix && graph_outputs.contains(name))
            {
                push_unique(&mut stages[s].outputs, name);
            }
        }
        for stage in &mut stages {
            stage.outputs.sort_by_key(|o| producer[o.as_str()]);
        }
        let template = ModelProto {
            graph: None,
            ..model.proto.clone()
        };
        Ok(Self {
            nodes,
            stages,
            graph_inputs,
            initializers,
            template,
        })
    }

    /// The version of the default ONNX domain the model imports (1 when it names none), which
    /// nodes added to its stages must follow.
    pub fn opset(&self) -> i64 {
        self.template
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("" | "ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(1)
    }

    /// The block stages, in order.
    pub fn blocks(&self) -> impl Iterator<Item = &Stage> {
        self.stages
            .iter()
            .filter(|s| matches!(s.kind, StageKind::Block(_)))
    }

    /// For each of `linears` (the linears of `stage`, in order), the indices of those among them
    /// whose output reaches its input through the stage's dataflow without crossing another
    /// linear: attention reads q, k and v; the MLP's gate and up read o (through the residual
    /// and norm); down reads gate and up.
    pub fn producers(&self, stage: &Stage, linears: &[&Linear]) -> Vec<Vec<usize>> {
        let in_stage: HashSet<usize> = stage.nodes.iter().copied().collect();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for &i in &stage.nodes {
            for o in &self.nodes[i].output {
                producer.insert(o.as_str(), i);
            }
        }
        // The node applying each linear in the partitioned (no-cache) graph.
        let node_linear: HashMap<usize, usize> = linears
            .iter()
            .enumerate()
            .flat_map(|(k, l)| {
                stage
                    .nodes
                    .iter()
                    .filter(move |&&i| l.nodes.iter().any(|n| n.name == self.nodes[i].name()))
                    .map(move |&i| (i, k))
            })
            .collect();
        linears
            .iter()
            .map(|l| {
                let mut found = Vec::new();
                let mut seen = HashSet::new();
                let start = l
                    .nodes
                    .iter()
                    .find(|n| n.graph.is_empty() || n.graph.ends_with("/else_branch"))
                    .unwrap_or(&l.nodes[0])
                    .input
                    .clone();
                let mut queue = vec![start];
                while let Some(tensor) = queue.pop() {
                    let Some(&p) = producer.get(tensor.as_str()) else {
                        continue;
                    };
                    if !in_stage.contains(&p) || !seen.insert(p) {
                        continue;
                    }
                    match node_linear.get(&p) {
                        Some(&k) => {
                            if !found.contains(&k) {
                                found.push(k);
                            }
                        }
                        None => queue.extend(self.nodes[p].input.iter().cloned()),
                    }
                }
                found.sort_unstable();
                found
            })
            .collect()
    }

    /// A self-contained model of `stage`: its nodes, every initializer they read (inline), inputs
    /// typed by `input_types` (graph inputs keep their declared types), the weights of `weights`
    /// turned into inputs, and besides its own outputs, the activations `extra_outputs` whole and
    /// the outputs of `probes`, whose nodes run after the stage's.
    pub fn stage_model(
        &self,
        model: &OnnxModel,
        stage: &Stage,
        input_types: &HashMap<String, TypeProto>,
        weights: &[&Linear],
        extra_outputs: &[String],
        probes: &[StageProbe],
    ) -> Result<ModelProto> {
        let weight_names: HashSet<&str> = weights.iter().map(|l| l.weight.name.as_str()).collect();
        let mut nodes: Vec<NodeProto> =
            stage.nodes.iter().map(|&i| self.nodes[i].clone()).collect();
        let mut read: BTreeSet<String> = BTreeSet::new();
        for n in &nodes {
            read.extend(all_inputs(n));
        }
        let mut initializer = Vec::new();
        let mut input: Vec<ValueInfoProto> = Vec::new();
        for name in &stage.inputs {
            let typed = self
                .graph_inputs
                .iter()
                .find(|i| i.name() == name)
                .map(|i| i.r#type.clone())
                .or_else(|| input_types.get(name).map(|t| Some(t.clone())))
                .ok_or_else(|| {
                    Error::graph(
                        &model.path,
                        format!("no type known for stage input '{name}'"),
                    )
                })?;
            input.push(ValueInfoProto {
                name: Some(name.clone()),
                r#type: typed,
                ..Default::default()
            });
        }
        for name in read.iter().filter(|n| !stage.inputs.contains(n)) {
            let Some(key) = self.initializers.get(name) else {
                continue; // produced inside the stage
            };
            let tensor = model
                .initializer(key)
                .ok_or_else(|| Error::tensor(name, "initializer vanished"))?;
            if weight_names.contains(name.as_str()) {
                input.push(ValueInfoProto {
                    name: Some(name.clone()),
                    r#type: Some(tensor_type(tensor)),
                    ..Default::default()
                });
            } else {
                initializer.push(inline(model, key, tensor)?);
            }
        }
        let mut probe_outputs = Vec::new();
        for p in probes {
            nodes.extend(p.nodes.iter().cloned());
            initializer.extend(p.initializers.iter().cloned());
            probe_outputs.extend(p.outputs.iter().cloned());
        }
        let mut output: Vec<ValueInfoProto> = stage
            .outputs
            .iter()
            .chain(extra_outputs)
            .chain(&probe_outputs)
            .map(|o| ValueInfoProto {
                name: Some(o.clone()),
                ..Default::default()
            })
            .collect();
        output.dedup_by(|a, b| a.name == b.name);
        let graph = GraphProto {
            name: Some(format!("{:?}", stage.kind)),
            node: nodes,
            initializer,
            input,
            output,
            ..Default::default()
        };
        Ok(ModelProto {
            graph: Some(graph),
            ..self.template.clone()
        })
    }
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

/// The type of an initializer, as a graph input declaration.
fn tensor_type(t: &TensorProto) -> TypeProto {
    use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
    use crate::onnx::proto::{type_proto, TensorShapeProto};
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(t.data_type()),
            shape: Some(TensorShapeProto {
                dim: t
                    .dims
                    .iter()
                    .map(|&d| Dimension {
                        value: Some(dimension::Value::DimValue(d)),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    }
}

/// A copy of an initializer with its data inline in `raw_data`.
fn inline(model: &OnnxModel, key: &TensorKey, t: &TensorProto) -> Result<TensorProto> {
    if t.external_data.is_empty() {
        return Ok(t.clone());
    }
    let bytes = model.tensor_bytes(&key.graph, t)?;
    Ok(TensorProto {
        name: t.name.clone(),
        dims: t.dims.clone(),
        data_type: t.data_type,
        raw_data: Some(prost::bytes::Bytes::copy_from_slice(&bytes)),
        ..Default::default()
    })
}

/// Every value a node reads, including outer-scope values read inside its subgraphs.
fn all_inputs(node: &NodeProto) -> Vec<String> {
    let mut out: Vec<String> = node
        .input
        .iter()
        .filter(|i| !i.is_empty())
        .cloned()
        .collect();
    for (_, g) in subgraphs(node) {
        let mut defined: HashSet<String> =
            g.initializer.iter().map(|t| t.name().to_string()).collect();
        defined.extend(g.input.iter().map(|i| i.name().to_string()));
        for n in &g.node {
            for i in all_inputs(n) {
                if !defined.contains(&i) && !out.contains(&i) {
                    out.push(i);
                }
            }
            defined.extend(n.output.iter().cloned());
        }
    }
    out
}

/// A decoder's nodes with a merged decoder's cache switch removed.
struct Flattened {
    /// The nodes, in graph order.
    nodes: Vec<NodeProto>,
    /// Initializers of the inlined branch.
    initializers: HashMap<String, TensorKey>,
    /// The graph input that selected the branch (`use_cache_branch`), now unused.
    removed_input: Option<String>,
}

/// The main graph's nodes with a merged decoder's `If` on `use_cache_branch` replaced by its
/// no-cache (else) branch.
fn flatten_merged(graph: &GraphProto) -> Result<Flattened> {
    let mut nodes = Vec::new();
    let mut initializers = HashMap::new();
    let mut removed = None;
    for node in &graph.node {
        let is_cache_switch = node.op_type() == "If"
            && node.input.first().map(String::as_str) == Some("use_cache_branch");
        if !is_cache_switch {
            nodes.push(node.clone());
            continue;
        }
        let branch = node
            .attribute
            .iter()
            .find(|a| a.name() == "else_branch")
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| Error::tensor(node.name(), "an If without else_branch"))?;
        let path = format!(
            "{}/else_branch",
            if node.name().is_empty() {
                "<If>"
            } else {
                node.name()
            }
        );
        for t in &branch.initializer {
            initializers.insert(
                t.name().to_string(),
                TensorKey {
                    graph: path.clone(),
                    name: t.name().to_string(),
                },
            );
        }
        nodes.extend(branch.node.iter().cloned());
        for (inner, outer) in branch.output.iter().zip(&node.output) {
            if inner.name() != outer {
                nodes.push(NodeProto {
                    name: Some(format!("{outer}/from_branch")),
                    op_type: Some("Identity".into()),
                    input: vec![inner.name().to_string()],
                    output: vec![outer.clone()],
                    metadata_props: Vec::<StringStringEntryProto>::new(),
                    ..Default::default()
                });
            }
        }
        removed = Some("use_cache_branch".to_string());
    }
    Ok(Flattened {
        nodes,
        initializers,
        removed_input: removed,
    })
}
