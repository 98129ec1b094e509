//! Discovery of prunable linears: every `MatMul`/`Gemm` whose weight operand is an initializer
//! (directly, or through `Transpose(perm=[1,0])`, `Cast` and `Identity`), in the main graph and in
//! `If`/`Loop`/`Scan` subgraphs, resolved against the enclosing graphs' initializers.

use super::naming::{module_path, ModulePath};
use crate::error::{Error, Result};
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::onnx::{data_type_name, subgraphs, NodeAt, OnnxModel, TensorKey, WeightDtype};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How a weight is stored relative to the canonical `[out, in]` view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Stored `[in, out]` (TorchScript-folded MatMul weights, Conv1D, genai builder).
    InOut,
    /// Stored `[out, in]` (PyTorch layout: dynamo's Transpose chains, `Gemm` with `transB=1`).
    OutIn,
}

/// One node that applies a prunable weight (merged decoders apply it once per `If` branch).
#[derive(Clone, Debug, Serialize)]
pub struct LinearNode {
    /// Path of the graph holding the node (`""` for the main graph).
    pub graph: String,
    /// The node's name.
    pub name: String,
    /// `MatMul` or `Gemm`.
    pub op_type: String,
    /// The activation the weight multiplies (the node's first input).
    pub input: String,
    /// The value the node reads as its weight (the node's second input: the initializer, or the
    /// end of its `Transpose`/`Cast`/`Identity` chain).
    pub operand: String,
}

impl LinearNode {
    /// Where the writer finds this node in the output's graph.
    pub fn at(&self) -> NodeAt {
        NodeAt {
            graph: self.graph.clone(),
            name: self.name.clone(),
            input: self.input.clone(),
            operand: self.operand.clone(),
        }
    }
}

/// A prunable linear layer inside a decoder block.
#[derive(Clone, Debug, Serialize)]
pub struct Linear {
    /// Decoder block index.
    pub block: usize,
    /// Module path below the block (`self_attn.q_proj`, `mlp.c_proj`, `fc1`).
    pub module: String,
    /// The weight initializer.
    pub weight: TensorKey,
    /// Element type of the stored weight.
    pub dtype: WeightDtype,
    /// Stored layout.
    pub layout: Layout,
    /// Output features (rows of the canonical `[out, in]` view).
    pub out_features: usize,
    /// Input features (columns of the canonical view).
    pub in_features: usize,
    /// The nodes applying the weight, in graph order.
    pub nodes: Vec<LinearNode>,
}

impl Linear {
    /// The last component of the module path (`q_proj`, `fc1`, `c_attn`).
    pub fn role(&self) -> &str {
        self.module.rsplit('.').next().unwrap_or(&self.module)
    }

    /// Number of weights.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }

    /// Whether it belongs to the block's MLP (`mlp.*` for LLaMA-style, Gemma and Phi exports,
    /// `fc1`/`fc2` for OPT) rather than to its attention.
    pub fn is_mlp(&self) -> bool {
        self.module.starts_with("mlp.") || self.role().starts_with("fc")
    }
}

/// Why a weight is not pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// A token embedding (`Gather` table).
    Embedding,
    /// The language-model head.
    LmHead,
    /// Used by several nodes (tied embedding and head, or a shared matrix).
    Tied,
    /// Stored quantized (`MatMulNBits`, `DequantizeLinear`).
    Quantized,
    /// A linear whose name places it in no decoder block.
    OutsideBlocks,
    /// Not a 2-D float weight, or applied in a way we do not rewrite (`Gemm` with `transA`).
    Unsupported,
}

/// A weight that is deliberately left unchanged.
#[derive(Clone, Debug, Serialize)]
pub struct Exclusion {
    /// The initializer.
    pub weight: TensorKey,
    /// The nodes using it.
    pub nodes: Vec<String>,
    /// Stored shape.
    pub shape: Vec<i64>,
    /// Why it is excluded.
    pub reason: ExclusionReason,
    /// One line of detail for `inspect`.
    pub detail: String,
}

/// The result of discovery.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    /// Prunable linears ordered by block, then graph order.
    pub linears: Vec<Linear>,
    /// Weights left alone, with reasons.
    pub excluded: Vec<Exclusion>,
    /// Number of distinct blocks.
    pub n_blocks: usize,
    /// Rows of the token embedding (the vocabulary the model accepts), when found.
    pub vocab: Option<usize>,
    /// Longest sequence the position tables (learned positions, rotary caches) allow, when the
    /// graph has such tables.
    pub max_positions: Option<usize>,
}

impl Discovery {
    /// The linears of block `block`, in order.
    pub fn block(&self, block: usize) -> impl Iterator<Item = &Linear> {
        self.linears.iter().filter(move |l| l.block == block)
    }

    /// Total number of prunable weights.
    pub fn prunable_params(&self) -> usize {
        self.linears.iter().map(Linear::numel).sum()
    }
}

/// What a weight operand was traced back to.
enum Traced<'a> {
    /// An initializer, through `transposes` 2-D transposes; `chain` holds the nodes in between.
    Weight {
        key: TensorKey,
        tensor: &'a TensorProto,
        transposes: usize,
        chain_head: usize,
    },
    /// A quantized weight behind a `DequantizeLinear`.
    Quantized {
        key: TensorKey,
        tensor: &'a TensorProto,
    },
}

/// One use of a weight found while walking the graphs.
struct Use<'a> {
    graph: String,
    node: &'a NodeProto,
    kind: UseKind,
}

enum UseKind {
    /// The weight operand of a `MatMul`/`Gemm`, through `transposes` transposes.
    Linear {
        transposes: usize,
        trans_b: bool,
        trans_a: bool,
    },
    /// The table of a `Gather` indexed by a graph input (`input_ids`, `position_ids`).
    Gather {
        indices: String,
        /// Reached through a transpose (the genai builder's tied `[hidden, vocab]` head).
        transposed: bool,
        /// Constant added to the ids before the lookup.
        offset: i64,
    },
    Quantized(&'static str),
}

struct Scope<'a> {
    path: String,
    initializers: HashMap<&'a str, &'a TensorProto>,
    producers: HashMap<&'a str, &'a NodeProto>,
}

/// Walks all graphs of `model` and classifies every weight operand.
pub fn discover(model: &OnnxModel) -> Result<Discovery> {
    let mut uses: BTreeMap<TensorKey, (&TensorProto, Vec<Use>)> = BTreeMap::new();
    let mut order: HashMap<TensorKey, usize> = HashMap::new();
    // Direct consumers of every initializer (node identity, name): a weight consumed by anything
    // other than the head of a linear's Transpose/Cast chain is shared.
    let mut direct: HashMap<TensorKey, Vec<(usize, String)>> = HashMap::new();
    let mut chain_heads: HashMap<TensorKey, Vec<usize>> = HashMap::new();
    let mut scopes: Vec<Scope> = Vec::new();
    walk(
        model.graph(),
        String::new(),
        &mut scopes,
        &mut |scope_stack, graph_path, node| {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if let Some((key, _)) = resolve(scope_stack, input) {
                    direct
                        .entry(key)
                        .or_default()
                        .push((node_id(node), node.name().to_string()));
                }
            }
            let classified = classify(scope_stack, node);
            if let Some((traced, kind)) = classified {
                let (key, tensor) = match &traced {
                    Traced::Weight {
                        key,
                        tensor,
                        chain_head,
                        ..
                    } => {
                        chain_heads
                            .entry(key.clone())
                            .or_default()
                            .push(*chain_head);
                        (key.clone(), *tensor)
                    }
                    Traced::Quantized { key, tensor } => (key.clone(), *tensor),
                };
                let n = order.len();
                order.entry(key.clone()).or_insert(n);
                uses.entry(key)
                    .or_insert_with(|| (tensor, Vec::new()))
                    .1
                    .push(Use {
                        graph: graph_path.to_string(),
                        node,
                        kind,
                    });
            }
        },
    );

    let mut linears = Vec::new();
    let mut excluded = Vec::new();
    let mut keys: Vec<&TensorKey> = uses.keys().collect();
    keys.sort_by_key(|k| order[*k]);
    for key in keys {
        let (tensor, weight_uses) = &uses[key];
        match judge(model, key, tensor, weight_uses, &direct, &chain_heads)? {
            Ok(linear) => linears.push((order[key], linear)),
            Err(exclusion) => excluded.push(exclusion),
        }
    }
    linears.sort_by_key(|(order, l)| (l.block, *order));
    let linears: Vec<Linear> = linears.into_iter().map(|(_, l)| l).collect();
    // Embedding tables are as wide as the hidden state that the first linear reads; narrower
    // tables gathered by position (rotary caches) are no embedding.
    if let Some(hidden) = linears.first().map(|l| l.in_features as i64) {
        excluded
            .retain(|e| e.reason != ExclusionReason::Embedding || e.shape.get(1) == Some(&hidden));
    }
    let mut blocks: Vec<usize> = linears.iter().map(|l| l.block).collect();
    blocks.dedup();
    let n_blocks = blocks.len();
    if linears.is_empty() {
        return Err(Error::graph(
            &model.path,
            format!(
                "no decoder blocks found: {} weight operand(s) of MatMul/Gemm/Gather seen, none a float linear inside a block named like 'layers.N' or 'h.N' (node name, initializer name or pkg.torch.onnx.name_scopes); run `neuroal-onnx inspect` to see what was found",
                excluded.len()
            ),
        ));
    }
    // Lookup tables: rows of the token embedding; positions the position tables cover.
    let mut vocab = None;
    let mut max_positions: Option<usize> = None;
    for (tensor, us) in uses.values() {
        for u in us {
            if let UseKind::Gather {
                indices,
                transposed,
                offset,
            } = &u.kind
            {
                let rows = tensor.dims[usize::from(*transposed)];
                if indices == "input_ids" {
                    vocab = vocab.or(usize::try_from(rows).ok());
                } else if let Some(n) = rows
                    .checked_sub(*offset)
                    .and_then(|n| usize::try_from(n).ok())
                {
                    max_positions = Some(max_positions.map_or(n, |m| m.min(n)));
                }
            }
        }
    }
    Ok(Discovery {
        linears,
        excluded,
        n_blocks,
        vocab,
        max_positions,
    })
}

/// Decides whether one weight is a prunable linear or why it is excluded. A prunable weight
/// with a non-float type is an error, not an exclusion: the user expects it pruned.
fn judge(
    model: &OnnxModel,
    key: &TensorKey,
    tensor: &TensorProto,
    uses: &[Use],
    direct: &HashMap<TensorKey, Vec<(usize, String)>>,
    chain_heads: &HashMap<TensorKey, Vec<usize>>,
) -> Result<std::result::Result<Linear, Exclusion>> {
    let node_names: Vec<String> = uses.iter().map(|u| u.node.name().to_string()).collect();
    let exclude = |reason, detail: String| {
        Ok(Err(Exclusion {
            weight: key.clone(),
            nodes: node_names.clone(),
            shape: tensor.dims.clone(),
            reason,
            detail,
        }))
    };
    if let Some(q) = uses.iter().find_map(|u| match u.kind {
        UseKind::Quantized(op) => Some(op),
        _ => None,
    }) {
        return exclude(
            ExclusionReason::Quantized,
            format!("quantized weight ({q}); prune before quantizing"),
        );
    }
    let linear_uses: Vec<&Use> = uses
        .iter()
        .filter(|u| matches!(u.kind, UseKind::Linear { .. }))
        .collect();
    let gathers = uses.len() - linear_uses.len();
    if linear_uses.is_empty() {
        let indices = uses.iter().find_map(|u| match &u.kind {
            UseKind::Gather { indices, .. } => Some(indices.as_str()),
            _ => None,
        });
        let what = if indices == Some("position_ids") {
            "position"
        } else {
            "token"
        };
        return exclude(
            ExclusionReason::Embedding,
            format!("{what} embedding (Gather)"),
        );
    }
    let first = linear_uses[0];
    let path = module_path(first.node, &key.name).unwrap_or_default();
    if is_lm_head(&path, first.node, &key.name) {
        let detail = if gathers > 0 {
            "LM head tied to the token embedding".to_string()
        } else {
            "LM head".to_string()
        };
        let reason = if gathers > 0 {
            ExclusionReason::Tied
        } else {
            ExclusionReason::LmHead
        };
        return exclude(reason, detail);
    }
    if gathers > 0 {
        return exclude(
            ExclusionReason::Tied,
            "shared between an embedding and a linear".into(),
        );
    }
    // Shared: more than one linear in one graph, or a direct consumer outside the linear chains.
    let mut per_graph: HashMap<&str, usize> = HashMap::new();
    for u in &linear_uses {
        *per_graph.entry(&u.graph).or_default() += 1;
    }
    let heads = chain_heads.get(key).map(Vec::as_slice).unwrap_or_default();
    let strangers: Vec<&(usize, String)> = direct
        .get(key)
        .map(|d| d.iter().filter(|(id, _)| !heads.contains(id)).collect())
        .unwrap_or_default();
    if per_graph.values().any(|&n| n > 1) || !strangers.is_empty() {
        let others: Vec<&str> = strangers.iter().map(|(_, n)| n.as_str()).collect();
        return exclude(
            ExclusionReason::Tied,
            format!(
                "shared by several nodes ({})",
                if others.is_empty() {
                    node_names.join(", ")
                } else {
                    others.join(", ")
                }
            ),
        );
    }
    let Some(block) = path.block else {
        return exclude(
            ExclusionReason::OutsideBlocks,
            format!("linear '{}' outside the decoder blocks", path.module),
        );
    };
    if tensor.dims.len() != 2 {
        return exclude(
            ExclusionReason::Unsupported,
            format!("{}-D weight", tensor.dims.len()),
        );
    }
    let UseKind::Linear {
        transposes,
        trans_b,
        trans_a,
    } = first.kind
    else {
        unreachable!("filtered above")
    };
    if trans_a {
        return exclude(ExclusionReason::Unsupported, "Gemm with transA=1".into());
    }
    let Some(dtype) = WeightDtype::from_onnx(tensor.data_type()) else {
        return Err(Error::tensor(
            &key.name,
            format!(
                "weight of '{}' has data type {}; neuroal-onnx prunes FLOAT, FLOAT16 and BFLOAT16 weights (convert the model first)",
                first.node.name(),
                data_type_name(tensor.data_type())
            ),
        ));
    };
    // MatMul computes X·B with B = [in, out]; each transpose (and Gemm's transB) flips that.
    let layout = if (transposes + trans_b as usize).is_multiple_of(2) {
        Layout::InOut
    } else {
        Layout::OutIn
    };
    let (d0, d1) = (dim(model, key, tensor, 0)?, dim(model, key, tensor, 1)?);
    let (out_features, in_features) = match layout {
        Layout::InOut => (d1, d0),
        Layout::OutIn => (d0, d1),
    };
    let nodes = linear_uses
        .iter()
        .map(|u| LinearNode {
            graph: u.graph.clone(),
            name: u.node.name().to_string(),
            op_type: u.node.op_type().to_string(),
            input: u.node.input.first().cloned().unwrap_or_default(),
            operand: u.node.input.get(1).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(Ok(Linear {
        block,
        module: path.module,
        weight: key.clone(),
        dtype,
        layout,
        out_features,
        in_features,
        nodes,
    }))
}

fn dim(model: &OnnxModel, key: &TensorKey, tensor: &TensorProto, axis: usize) -> Result<usize> {
    usize::try_from(tensor.dims[axis]).map_err(|_| {
        Error::tensor(
            &key.name,
            format!(
                "has a negative dimension {:?} in {}",
                tensor.dims,
                model.path.display()
            ),
        )
    })
}

fn is_lm_head(path: &ModulePath, node: &NodeProto, initializer: &str) -> bool {
    let names = [path.module.as_str(), node.name(), initializer];
    names
        .iter()
        .any(|n| n.contains("lm_head") || n.contains("embed_out"))
}

/// Identity of a node for the duration of one discovery (names may be empty or repeated).
fn node_id(node: &NodeProto) -> usize {
    node as *const NodeProto as usize
}

/// Recursive walk keeping the stack of enclosing scopes; calls `f` on every node.
fn walk<'a>(
    graph: &'a GraphProto,
    path: String,
    scopes: &mut Vec<Scope<'a>>,
    f: &mut impl FnMut(&[Scope<'a>], &str, &'a NodeProto),
) {
    let initializers = graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let producers = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    scopes.push(Scope {
        path: path.clone(),
        initializers,
        producers,
    });
    for node in &graph.node {
        f(scopes, &path, node);
        for (segment, sub) in subgraphs(node) {
            let sub_path = if path.is_empty() {
                segment
            } else {
                format!("{path}/{segment}")
            };
            walk(sub, sub_path, scopes, f);
        }
    }
    scopes.pop();
}

/// Resolves a value name to an initializer visible from the innermost scope.
fn resolve<'a>(scopes: &[Scope<'a>], name: &str) -> Option<(TensorKey, &'a TensorProto)> {
    let innermost = scopes.last()?;
    // A value produced by a node of the current graph shadows outer initializers.
    if innermost.producers.contains_key(name) {
        return None;
    }
    scopes.iter().rev().find_map(|s| {
        s.initializers.get(name).map(|t| {
            (
                TensorKey {
                    graph: s.path.clone(),
                    name: name.to_string(),
                },
                *t,
            )
        })
    })
}

/// Classifies a node that consumes a weight: linear, embedding gather or quantized matmul.
fn classify<'a>(scopes: &[Scope<'a>], node: &'a NodeProto) -> Option<(Traced<'a>, UseKind)> {
    let int_attr = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .map(|a| a.i())
            .unwrap_or(0)
    };
    match node.op_type() {
        "MatMul" | "Gemm" => {
            let traced = trace(scopes, node.input.get(1)?, node)?;
            let kind = match &traced {
                Traced::Quantized { .. } => UseKind::Quantized("DequantizeLinear"),
                Traced::Weight { transposes, .. } => UseKind::Linear {
                    transposes: *transposes,
                    trans_b: node.op_type() == "Gemm" && int_attr("transB") != 0,
                    trans_a: node.op_type() == "Gemm" && int_attr("transA") != 0,
                },
            };
            Some((traced, kind))
        }
        "MatMulNBits" | "MatMulInteger" | "QLinearMatMul" | "MatMulIntegerToFloat" => {
            let (key, tensor) = resolve(scopes, node.input.get(1)?)?;
            let op = match node.op_type() {
                "MatMulNBits" => "MatMulNBits",
                "MatMulInteger" => "MatMulInteger",
                _ => "QLinearMatMul",
            };
            Some((Traced::Quantized { key, tensor }, UseKind::Quantized(op)))
        }
        // Embedding tables: 2-D tables gathered by token or position ids. Other lookup tables
        // (rotary caches) are not weights of interest; if one also fed a linear, the linear's
        // sharing check would catch it.
        "Gather" => {
            let (indices, offset) = gathered_input(scopes, node)?;
            let traced = trace(scopes, node.input.first()?, node)?;
            match traced {
                Traced::Weight {
                    tensor, transposes, ..
                } if tensor.dims.len() == 2 => {
                    let transposed = transposes % 2 == 1;
                    Some((
                        traced,
                        UseKind::Gather {
                            indices,
                            transposed,
                            offset,
                        },
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The graph input (`input_ids` or `position_ids`) a `Gather`'s indices come from, directly or
/// through a few index arithmetic ops (`Cast`, `Reshape`, `Unsqueeze`, `Add` of an offset, ...),
/// with the constant offset added on the way (OPT's learned positions start at 2). Offsets that
/// overflow an i64 are no offsets. Each (value, depth) is searched once: index ops with many
/// inputs would otherwise make the search exponential in the depth.
fn gathered_input<'a>(scopes: &[Scope<'a>], node: &'a NodeProto) -> Option<(String, i64)> {
    type Memo<'n> = HashMap<(&'n str, usize), Option<(String, i64)>>;
    fn search<'n>(
        scopes: &[Scope<'n>],
        name: &'n str,
        depth: usize,
        memo: &mut Memo<'n>,
    ) -> Option<(String, i64)> {
        if name == "input_ids" || name == "position_ids" {
            return Some((name.to_string(), 0));
        }
        if let Some(known) = memo.get(&(name, depth)) {
            return known.clone();
        }
        let producer: &'n NodeProto = *scopes.last()?.producers.get(name)?;
        let index_op = matches!(
            producer.op_type(),
            "Cast" | "Identity" | "Reshape" | "Unsqueeze" | "Squeeze" | "Add" | "Sub"
        );
        if depth == 0 || !index_op {
            return None;
        }
        let found = producer.input.iter().find_map(|i| {
            let (found, offset) = search(scopes, i, depth - 1, memo)?;
            let addend: i64 = match producer.op_type() {
                "Add" | "Sub" => producer
                    .input
                    .iter()
                    .filter(|other| *other != i)
                    .filter_map(|other| constant_int(scopes, other))
                    .try_fold(0i64, i64::checked_add)?,
                _ => 0,
            };
            let addend = if producer.op_type() == "Sub" {
                addend.checked_neg()?
            } else {
                addend
            };
            Some((found, offset.checked_add(addend)?))
        });
        memo.insert((name, depth), found.clone());
        found
    }
    search(scopes, node.input.get(1)?, 4, &mut HashMap::new())
}

/// The value of a scalar integer constant (an initializer or a `Constant` node's output).
fn constant_int(scopes: &[Scope], name: &str) -> Option<i64> {
    let tensor = match resolve(scopes, name) {
        Some((_, t)) => t,
        None => {
            let node = scopes.last()?.producers.get(name)?;
            if node.op_type() != "Constant" {
                return None;
            }
            node.attribute
                .iter()
                .find(|a| a.name() == "value")?
                .t
                .as_ref()?
        }
    };
    // Declared dims are unchecked here (a Constant's value): multiply without overflowing.
    if tensor.dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d)) != Some(1) {
        return None;
    }
    if let Some(&v) = tensor.int64_data.first() {
        return Some(v);
    }
    if let Some(&v) = tensor.int32_data.first() {
        return Some(i64::from(v));
    }
    let raw = tensor.raw_data();
    match raw.len() {
        8 => Some(i64::from_le_bytes(raw.try_into().ok()?)),
        4 => Some(i64::from(i32::from_le_bytes(raw.try_into().ok()?))),
        _ => None,
    }
}

/// Follows a weight operand back through `Transpose`/`Cast`/`Identity`/`DequantizeLinear` to an
/// initializer. Returns `None` for activations.
fn trace<'a>(scopes: &[Scope<'a>], start: &str, consumer: &NodeProto) -> Option<Traced<'a>> {
    let innermost = scopes.last()?;
    let mut name = start.to_string();
    let mut transposes = 0;
    let mut chain_head = node_id(consumer);
    let mut dequantized = false;
    for _ in 0..8 {
        if let Some((key, tensor)) = resolve(scopes, &name) {
            return Some(if dequantized {
                Traced::Quantized { key, tensor }
            } else {
                Traced::Weight {
                    key,
                    tensor,
                    transposes,
                    chain_head,
                }
            });
        }
        let producer = innermost.producers.get(name.as_str())?;
        match producer.op_type() {
            "Transpose" => {
                let perm: Vec<i64> = producer
                    .attribute
                    .iter()
                    .find(|a| a.name() == "perm")
                    .map(|a| a.ints.clone())
                    .unwrap_or_else(|| vec![1, 0]);
                if perm != [1, 0] {
                    return None;
                }
                transposes += 1;
            }
            "Cast" | "Identity" => {}
            "DequantizeLinear" => dequantized = true,
            _ => return None,
        }
        chain_head = node_id(producer);
        name = producer.input.first()?.clone();
    }
    None
}
