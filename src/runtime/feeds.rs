//! Values for a decoder's graph inputs, bound by name: token ids, attention mask, position ids,
//! empty past key/values and the merged decoder's `use_cache_branch`.

use super::Activation;
use crate::error::{Error, Result};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{type_proto, GraphProto, NodeProto, ValueInfoProto};
use crate::onnx::{data_type_name, visit_graphs, OnnxModel, WeightDtype};
use ndarray::{Array, IxDyn};

/// What the model expects on one of its inputs.
#[derive(Clone, Debug)]
enum InputKind {
    /// Token ids, `[batch, seq]`, int64 or int32.
    InputIds { int32: bool },
    /// Ones over past + current tokens.
    AttentionMask { int32: bool },
    /// 0..seq.
    PositionIds { int32: bool },
    /// A cache `[batch, heads, past, head_dim]`, empty on the first step.
    Past {
        heads: usize,
        head_dim: usize,
        dtype: WeightDtype,
    },
    /// Merged decoders: `false` selects the no-cache branch.
    UseCacheBranch,
}

/// How to feed every runtime input of a decoder for one window of tokens (batch 1).
#[derive(Clone, Debug)]
pub struct GraphFeeds {
    inputs: Vec<(String, InputKind)>,
}

impl GraphFeeds {
    /// Works out how to feed `inputs` (the graph's runtime inputs) of `model`.
    pub fn new(model: &OnnxModel, inputs: &[ValueInfoProto]) -> Result<Self> {
        let path = model.path.as_path();
        let mut out = Vec::new();
        let mut config = None;
        for info in inputs {
            let name = info.name();
            let elem = tensor_type(info).map(|t| t.elem_type()).unwrap_or(0);
            let int32 = elem == DataType::Int32 as i32;
            let kind = if name == "input_ids" {
                InputKind::InputIds { int32 }
            } else if name == "attention_mask" {
                InputKind::AttentionMask { int32 }
            } else if name == "position_ids" {
                InputKind::PositionIds { int32 }
            } else if name == "use_cache_branch" {
                InputKind::UseCacheBranch
            } else if name.starts_with("past_key_values") || name.starts_with("past.") {
                let dtype = WeightDtype::from_onnx(elem).ok_or_else(|| {
                    Error::unsupported(
                        path,
                        format!(
                            "past key/value input '{name}' is of type {}",
                            data_type_name(elem)
                        ),
                        "neuroal-onnx feeds float32, float16 and bfloat16 caches; quantized caches are not supported",
                    )
                })?;
                let config = match &mut config {
                    Some(c) => c,
                    None => config.insert(CacheConfig::read(model)?),
                };
                let heads = static_dim(info, 1).or(config.kv_heads);
                let head_dim = static_dim(info, 3)
                    .or(config.head_size)
                    .or_else(|| head_size_from_attention(model.graph(), name));
                match (heads, head_dim) {
                    (Some(heads), Some(head_dim)) => InputKind::Past {
                        heads,
                        head_dim,
                        dtype,
                    },
                    _ => {
                        return Err(Error::unsupported(
                            path,
                            format!("input '{name}' does not declare its heads and head size (dims 1 and 3), and neither genai_config.json beside the model nor the attention node that reads it gives them"),
                            "export with static KV-cache dims, or keep the exporter's genai_config.json (model.decoder.head_size, num_key_value_heads) next to the model",
                        ))
                    }
                }
            } else {
                return Err(Error::graph(
                    path,
                    format!("input '{name}' is not one a decoder-only LLM export takes (input_ids, attention_mask, position_ids, past_key_values.*, use_cache_branch)"),
                ));
            };
            out.push((name.to_string(), kind));
        }
        if !out
            .iter()
            .any(|(_, k)| matches!(k, InputKind::InputIds { .. }))
        {
            return Err(Error::graph(path, "the graph has no 'input_ids' input"));
        }
        Ok(Self { inputs: out })
    }

    /// The value of every input for one window of token ids (batch 1, empty cache).
    pub fn values(&self, ids: &[i64]) -> Result<Vec<(String, Activation)>> {
        self.step(ids, 1, 0, &mut std::collections::HashMap::new())
    }

    /// The value of every input for `batch` rows of `ids.len() / batch` new tokens after
    /// `past_len` cached ones; cached key/values are taken from `past` (empty when absent).
    pub fn step(
        &self,
        ids: &[i64],
        batch: usize,
        past_len: usize,
        past: &mut std::collections::HashMap<String, Activation>,
    ) -> Result<Vec<(String, Activation)>> {
        let seq = ids.len() / batch.max(1);
        let total = past_len + seq;
        self.inputs
            .iter()
            .map(|(name, kind)| {
                let value = match kind {
                    InputKind::InputIds { int32 } => ints(&[batch, seq], ids.to_vec(), *int32),
                    InputKind::AttentionMask { int32 } => {
                        ints(&[batch, total], vec![1; batch * total], *int32)
                    }
                    InputKind::PositionIds { int32 } => {
                        let positions =
                            (0..batch).flat_map(|_| (past_len..total).map(|p| p as i64));
                        ints(&[batch, seq], positions.collect(), *int32)
                    }
                    InputKind::Past {
                        heads,
                        head_dim,
                        dtype,
                    } => match past.remove(name) {
                        Some(cached) => Ok(cached),
                        None if past_len == 0 => {
                            Activation::from_le_bytes(*dtype, &[batch, *heads, 0, *head_dim], &[])
                        }
                        None => Err(Error::internal(format!("no cached value for '{name}'"))),
                    },
                    InputKind::UseCacheBranch => {
                        Activation::from_array(Array::from_elem(IxDyn(&[1]), past_len > 0))
                    }
                }?;
                Ok((name.clone(), value))
            })
            .collect()
    }
}

fn ints(shape: &[usize], values: Vec<i64>, int32: bool) -> Result<Activation> {
    let shape = IxDyn(shape);
    let bad = |e: ndarray::ShapeError| Error::internal(e.to_string());
    if int32 {
        let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
        Activation::from_array(Array::from_shape_vec(shape, v).map_err(bad)?)
    } else {
        Activation::from_array(Array::from_shape_vec(shape, values).map_err(bad)?)
    }
}

fn tensor_type(info: &ValueInfoProto) -> Option<&type_proto::Tensor> {
    match info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

/// Static size of dimension `axis` of an input, if declared.
fn static_dim(info: &ValueInfoProto, axis: usize) -> Option<usize> {
    let dim = tensor_type(info)?.shape.as_ref()?.dim.get(axis)?;
    match dim.value {
        Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
            usize::try_from(v).ok()
        }
        _ => None,
    }
}

/// What the onnxruntime-genai builder's `genai_config.json` beside a model says about its KV
/// cache: the builder declares the head size as a symbolic `kv_cache_dim` and writes the number
/// here (docs/onnx-layouts.md, "onnxruntime-genai").
#[derive(Default)]
struct CacheConfig {
    head_size: Option<usize>,
    kv_heads: Option<usize>,
}

impl CacheConfig {
    /// Reads `genai_config.json` from the model's folder; nothing when there is none.
    fn read(model: &OnnxModel) -> Result<Self> {
        let path = model.dir.join("genai_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::graph(
                &path,
                format!("not valid JSON ({e}); fix or remove the runtime's config file"),
            )
        })?;
        let decoder = &json["model"]["decoder"];
        let number = |key: &str| decoder[key].as_u64().and_then(|v| usize::try_from(v).ok());
        Ok(Self {
            head_size: number("head_size"),
            kv_heads: number("num_key_value_heads"),
        })
    }
}

/// The head size of the cache input `past`, from the `GroupQueryAttention` node that reads it:
/// the width of the projection feeding its query (packed q, k, v when its key input is empty)
/// over its head count.
fn head_size_from_attention(graph: &GraphProto, past: &str) -> Option<usize> {
    let mut found = None;
    let _ = visit_graphs(graph, &mut |_, g, _| {
        if found.is_none() {
            found = g
                .node
                .iter()
                .filter(|n| {
                    n.op_type() == "GroupQueryAttention" && n.input.iter().any(|i| i == past)
                })
                .find_map(|attention| attention_head_size(g, attention));
        }
    });
    found
}

fn attention_head_size(graph: &GraphProto, attention: &NodeProto) -> Option<usize> {
    let int = |name: &str| {
        attention
            .attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| usize::try_from(a.i()).ok())
    };
    let (heads, kv_heads) = (int("num_heads")?, int("kv_num_heads")?);
    let packed = attention.input.get(1).is_none_or(|k| k.is_empty());
    let width = projection_width(graph, attention.input.first()?)?;
    let total = if packed { heads + 2 * kv_heads } else { heads };
    (total > 0 && width % total == 0).then(|| width / total)
}

/// The output width of the linear that computes `tensor`: back through a bias `Add`, `Cast` or
/// `Identity` to a `MatMul` whose `[in, out]` weight is an initializer (possibly behind a `Cast`).
fn projection_width(graph: &GraphProto, tensor: &str) -> Option<usize> {
    let producer = |t: &str| -> Option<&NodeProto> {
        graph.node.iter().find(|n| n.output.iter().any(|o| o == t))
    };
    let initializer_dims = |t: &str| {
        graph
            .initializer
            .iter()
            .find(|i| i.name() == t)
            .map(|i| i.dims.clone())
            .or_else(|| {
                let cast = producer(t).filter(|n| n.op_type() == "Cast")?;
                let source = cast.input.first()?;
                graph
                    .initializer
                    .iter()
                    .find(|i| i.name() == source)
                    .map(|i| i.dims.clone())
            })
    };
    let mut at = tensor.to_string();
    for _ in 0..8 {
        let node = producer(&at)?;
        match node.op_type() {
            "MatMul" => {
                let dims = initializer_dims(node.input.get(1)?)?;
                return dims.last().and_then(|&d| usize::try_from(d).ok());
            }
            "Add" => {
                at = node
                    .input
                    .iter()
                    .find(|i| initializer_dims(i).is_none())?
                    .clone();
            }
            "Cast" | "Identity" => at = node.input.first()?.clone(),
            _ => return None,
        }
    }
    None
}
