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
use crate::onnx::{default_opset, subgraphs, OnnxModel, TensorKey, WeightDtype};
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
        let RuntimeView {
            nodes,
            initializers,
            graph_inputs,
        } = runtime_view(graph)?;
        let blocks: BTreeSet<usize> = discovery.linears.iter().map(|l| l.block).collect();
        let flow = Dataflow::new(&nodes, &blocks);
        let graph_input_names: HashSet<&str> = graph_inputs.iter().map(|i| i.name()).collect();
        let data_dependent = flow.data_dependent(&graph_input_names);
        let stage_of = flow.stage_of(&data_dependent, blocks.len() + 1);
        let mut stages = empty_stages(&blocks);
        let last_reader = connect_inputs(
            model,
            &flow,
            &stage_of,
            &initializers,
            &graph_input_names,
            &mut stages,
        )?;
        let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
        connect_outputs(&flow, &stage_of, &last_reader, &graph_outputs, &mut stages);
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
        default_opset(&self.template)
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
    /// and every float initializer of [`FED_BYTES`] or more turned into inputs, and besides its
    /// own outputs, the activations `extra_outputs` whole and the outputs of `probes`, whose nodes
    /// run after the stage's.
    pub fn stage_model(
        &self,
        model: &OnnxModel,
        stage: &Stage,
        input_types: &HashMap<String, TypeProto>,
        weights: &[&Linear],
        extra_outputs: &[String],
        probes: &[StageProbe],
    ) -> Result<StageModel> {
        let weight_names: HashSet<&str> = weights.iter().map(|l| l.weight.name.as_str()).collect();
        let mut fed = Vec::new();
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
            let large = WeightDtype::from_onnx(tensor.data_type()).is_some_and(|d| {
                let numel = tensor
                    .dims
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d.max(0) as u64));
                numel.is_some_and(|n| n.saturating_mul(d.size() as u64) >= FED_BYTES as u64)
            });
            if weight_names.contains(name.as_str()) || large {
                input.push(ValueInfoProto {
                    name: Some(name.clone()),
                    r#type: Some(tensor_type(tensor)),
                    ..Default::default()
                });
                if !weight_names.contains(name.as_str()) {
                    fed.push(key.clone());
                }
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
        Ok(StageModel {
            proto: ModelProto {
                graph: Some(graph),
                ..self.template.clone()
            },
            fed,
        })
    }
}

/// Float initializers of at least this many bytes (an embedding, a tied LM head) are inputs of
/// the stage models that read them, fed at every run, rather than copied into the model: ONNX
/// Runtime then keeps no copy of its own, and opening the session copies nothing large
/// (docs/big-models.md, "Evaluation").
pub const FED_BYTES: usize = 16 << 20;

/// A stage's model ([`Partition::stage_model`]).
pub struct StageModel {
    /// The model.
    pub proto: ModelProto,
    /// Initializers of [`FED_BYTES`] or more it takes as inputs, besides the given weights.
    pub fed: Vec<TensorKey>,
}

/// The graph as the stages see it.
struct RuntimeView {
    /// Its nodes (a merged decoder flattened to its no-cache branch).
    nodes: Vec<NodeProto>,
    /// Every initializer by name.
    initializers: HashMap<String, TensorKey>,
    /// The runtime inputs: neither initializers nor the removed branch selector.
    graph_inputs: Vec<ValueInfoProto>,
}

/// The [`RuntimeView`] of `graph`.
fn runtime_view(graph: &GraphProto) -> Result<RuntimeView> {
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
    Ok(RuntimeView {
        nodes,
        initializers,
        graph_inputs,
    })
}

/// The decoder's dataflow, by node index in graph order.
struct Dataflow<'n> {
    nodes: &'n [NodeProto],
    /// Every value each node reads.
    node_inputs: Vec<Vec<String>>,
    /// The node producing each value.
    producer: HashMap<&'n str, usize>,
    /// The block stage each node's name places it in, if any.
    named: Vec<Option<usize>>,
}

impl<'n> Dataflow<'n> {
    /// The dataflow of `nodes`, with the stage of each block in `blocks` (1 for the first).
    fn new(nodes: &'n [NodeProto], blocks: &BTreeSet<usize>) -> Self {
        let block_stage: HashMap<usize, usize> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, i + 1))
            .collect();
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
        Self {
            nodes,
            node_inputs,
            producer,
            named,
        }
    }

    /// The earlier nodes node `i` reads from.
    fn producers_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.node_inputs[i]
            .iter()
            .filter_map(|n| self.producer.get(n.as_str()).copied())
            .filter(move |&p| p < i)
    }

    /// Whether each node depends on the runtime inputs (or sits in a block). Nodes that read only
    /// initializers (constants, a transposed tied embedding) are run where they are needed,
    /// instead of being carried for every window.
    fn data_dependent(&self, graph_input_names: &HashSet<&str>) -> Vec<bool> {
        let mut data_dependent = vec![false; self.nodes.len()];
        for i in 0..self.nodes.len() {
            data_dependent[i] = self.named[i].is_some()
                || self.node_inputs[i]
                    .iter()
                    .any(|n| graph_input_names.contains(n.as_str()))
                || self.producers_of(i).any(|p| data_dependent[p]);
        }
        data_dependent
    }

    /// The stage of each node (0: prefix, `suffix`: suffix): a named node runs in its block;
    /// any other as soon as what it reads is ready, in the suffix when it belongs to the tail
    /// no block needs, and a constant node with its first reader.
    fn stage_of(&self, data_dependent: &[bool], suffix: usize) -> Vec<usize> {
        let n = self.nodes.len();
        let mut stage_of = vec![0usize; n];
        for i in 0..n {
            let ready = self.producers_of(i).map(|p| stage_of[p]).max().unwrap_or(0);
            stage_of[i] = self.named[i].unwrap_or(ready);
        }
        // Unnamed nodes after the last block that no block needs (final norm, LM head) form the
        // suffix, with everything that reads them.
        let mut needed_by_block = vec![false; n];
        for i in (0..n).rev() {
            needed_by_block[i] |= self.named[i].is_some();
            if needed_by_block[i] {
                for p in self.producers_of(i).collect::<Vec<_>>() {
                    needed_by_block[p] = true;
                }
            }
        }
        for i in 0..n {
            let after_suffix = self
                .producers_of(i)
                .any(|p| data_dependent[p] && stage_of[p] == suffix);
            let tail = stage_of[i] == suffix - 1 && !needed_by_block[i];
            if self.named[i].is_none() && data_dependent[i] && (after_suffix || tail) {
                stage_of[i] = suffix;
            }
        }
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            for p in self.producers_of(i).collect::<Vec<_>>() {
                consumers[p].push(i);
            }
        }
        for i in (0..n).rev() {
            if !data_dependent[i] {
                stage_of[i] = consumers[i]
                    .iter()
                    .map(|&c| stage_of[c])
                    .min()
                    .unwrap_or(suffix);
            }
        }
        stage_of
    }
}

/// The prefix, one stage per block in `blocks`, the suffix: no nodes or boundaries yet.
fn empty_stages(blocks: &BTreeSet<usize>) -> Vec<Stage> {
    let suffix = blocks.len() + 1;
    (0..=suffix)
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
        .collect()
}

/// Puts every node in its stage and records each stage's inputs, refusing a node that reads a
/// later stage's value or a value nothing produces. Returns the last stage reading each value
/// that crosses a boundary.
fn connect_inputs(
    model: &OnnxModel,
    flow: &Dataflow<'_>,
    stage_of: &[usize],
    initializers: &HashMap<String, TensorKey>,
    graph_input_names: &HashSet<&str>,
    stages: &mut [Stage],
) -> Result<HashMap<String, usize>> {
    let mut last_reader: HashMap<String, usize> = HashMap::new();
    for (i, node) in flow.nodes.iter().enumerate() {
        let s = stage_of[i];
        stages[s].nodes.push(i);
        for input in &flow.node_inputs[i] {
            if initializers.contains_key(input) && !flow.producer.contains_key(input.as_str()) {
                continue;
            }
            match flow.producer.get(input.as_str()) {
                Some(&p) if stage_of[p] == s => {}
                Some(&p) if stage_of[p] > s => {
                    return Err(Error::graph(
                        &model.path,
                        format!(
                            "cannot cut the graph into blocks: node '{}' (stage {s}) reads '{input}' which node '{}' of a later stage produces",
                            node.name(),
                            flow.nodes[p].name()
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
    Ok(last_reader)
}

/// Each stage's outputs: the values a later stage reads, and for the suffix the graph outputs it
/// produces, in the order they are produced.
fn connect_outputs(
    flow: &Dataflow<'_>,
    stage_of: &[usize],
    last_reader: &HashMap<String, usize>,
    graph_outputs: &HashSet<&str>,
    stages: &mut [Stage],
) {
    let suffix = stages.len() - 1;
    for (name, &p) in &flow.producer {
        let s = stage_of[p];
        if last_reader.get(*name).is_some_and(|&r| r > s)
            || (s == suffix && graph_outputs.contains(name))
        {
            push_unique(&mut stages[s].outputs, name);
        }
    }
    for stage in stages {
        stage.outputs.sort_by_key(|o| flow.producer[o.as_str()]);
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
