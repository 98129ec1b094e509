//! Values for a decoder's graph inputs, bound by name: token ids, attention mask, position ids,
//! empty past key/values and the merged decoder's `use_cache_branch`.

use super::Activation;
use crate::error::{Error, Result};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{type_proto, ValueInfoProto};
use ndarray::{Array, IxDyn};
use std::path::Path;

/// What the model expects on one of its inputs.
#[derive(Clone, Debug)]
enum InputKind {
    /// Token ids, `[batch, seq]`, int64 or int32.
    InputIds { int32: bool },
    /// Ones over past + current tokens.
    AttentionMask { int32: bool },
    /// 0..seq.
    PositionIds { int32: bool },
    /// An empty cache `[batch, heads, 0, head_dim]`.
    Past { heads: usize, head_dim: usize },
    /// Merged decoders: `false` selects the no-cache branch.
    UseCacheBranch,
}

/// How to feed every runtime input of a decoder for one window of tokens (batch 1).
#[derive(Clone, Debug)]
pub struct GraphFeeds {
    inputs: Vec<(String, InputKind)>,
}

impl GraphFeeds {
    /// Works out how to feed `inputs` (the graph's runtime inputs) of the model at `path`.
    pub fn new(path: &Path, inputs: &[ValueInfoProto]) -> Result<Self> {
        let mut out = Vec::new();
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
                if elem != DataType::Float as i32 {
                    return Err(Error::not_implemented(
                        format!("past key/value input '{name}' of a non-float32 type"),
                        "export the model with float32 inputs and outputs",
                    ));
                }
                match (static_dim(info, 1), static_dim(info, 3)) {
                    (Some(heads), Some(head_dim)) => InputKind::Past { heads, head_dim },
                    _ => {
                        return Err(Error::graph(
                            path,
                            format!("input '{name}' does not declare static heads and head_dim (dims 1 and 3); cannot build an empty cache"),
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
                    InputKind::Past { heads, head_dim } => match past.remove(name) {
                        Some(cached) => Ok(cached),
                        None if past_len == 0 => {
                            Activation::from_array(Array::<f32, _>::zeros(IxDyn(&[
                                batch, *heads, 0, *head_dim,
                            ])))
                        }
                        None => Err(Error::Runtime(format!("no cached value for '{name}'"))),
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
    let bad = |e: ndarray::ShapeError| Error::Runtime(e.to_string());
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
