//! A causal language model session: binds the exporter's inputs by name (token ids, attention
//! mask, position ids, empty past key/values, the merged decoder's `use_cache_branch`) and
//! returns the logits.

use super::Runtime;
use crate::error::{Error, Result};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{type_proto, GraphProto, ValueInfoProto};
use crate::onnx::OnnxModel;
use ndarray::{Array, Array2, IxDyn};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::Tensor;
use std::borrow::Cow;

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

/// A loaded causal LM ready to score token windows (batch 1).
pub struct CausalLm {
    session: Session,
    inputs: Vec<(String, InputKind)>,
    logits: String,
}

impl CausalLm {
    /// Opens `model` in ONNX Runtime and works out how to feed it from its graph inputs.
    pub fn open(runtime: &Runtime, model: &OnnxModel) -> Result<Self> {
        let inputs = bind_inputs(model)?;
        let logits = logits_output(model.graph()).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        let session = runtime.session(&model.path)?;
        Ok(Self {
            session,
            inputs,
            logits,
        })
    }

    /// Runs one window of token ids and returns the logits, `[ids.len(), vocab]`.
    pub fn logits(&mut self, ids: &[i64]) -> Result<Array2<f32>> {
        let seq = ids.len();
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for (name, kind) in &self.inputs {
            let value: SessionInputValue = match kind {
                InputKind::InputIds { int32 } => ints(&[1, seq], ids.iter().copied(), *int32)?,
                InputKind::AttentionMask { int32 } => {
                    ints(&[1, seq], std::iter::repeat_n(1, seq), *int32)?
                }
                InputKind::PositionIds { int32 } => ints(&[1, seq], 0..seq as i64, *int32)?,
                InputKind::Past { heads, head_dim } => {
                    let empty = Array::<f32, _>::zeros(IxDyn(&[1, *heads, 0, *head_dim]));
                    Tensor::from_array(empty).map_err(runtime_err)?.into()
                }
                InputKind::UseCacheBranch => {
                    let flag = Array::from_shape_vec(IxDyn(&[1]), vec![false])
                        .map_err(|e| Error::Runtime(e.to_string()))?;
                    Tensor::from_array(flag).map_err(runtime_err)?.into()
                }
            };
            values.push((Cow::Borrowed(name.as_str()), value));
        }
        let options = RunOptions::new()
            .map_err(runtime_err)?
            .with_outputs(ort::session::OutputSelector::no_default().with(&self.logits));
        let outputs = self
            .session
            .run_with_options(values, &options)
            .map_err(runtime_err)?;
        let view = outputs[self.logits.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| Error::Runtime(format!("output '{}': {e}", self.logits)))?;
        let shape = view.shape().to_vec();
        if shape.len() != 3 || shape[0] != 1 || shape[1] != seq {
            return Err(Error::Runtime(format!(
                "output '{}' has shape {shape:?}; expected [1, {seq}, vocab]",
                self.logits
            )));
        }
        let vocab = shape[2];
        let flat: Vec<f32> = view.iter().copied().collect();
        Array2::from_shape_vec((seq, vocab), flat).map_err(|e| Error::Runtime(e.to_string()))
    }
}

fn runtime_err(e: impl std::fmt::Display) -> Error {
    Error::Runtime(e.to_string())
}

fn ints(
    shape: &[usize],
    values: impl Iterator<Item = i64>,
    int32: bool,
) -> Result<SessionInputValue<'static>> {
    let values: Vec<i64> = values.collect();
    Ok(if int32 {
        let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
        let a =
            Array::from_shape_vec(IxDyn(shape), v).map_err(|e| Error::Runtime(e.to_string()))?;
        Tensor::from_array(a).map_err(runtime_err)?.into()
    } else {
        let a = Array::from_shape_vec(IxDyn(shape), values)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        Tensor::from_array(a).map_err(runtime_err)?.into()
    })
}

/// The graph's runtime inputs (initializers listed as inputs are not fed).
fn runtime_inputs(graph: &GraphProto) -> impl Iterator<Item = &ValueInfoProto> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .input
        .iter()
        .filter(move |i| !initializers.contains(i.name()))
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

fn bind_inputs(model: &OnnxModel) -> Result<Vec<(String, InputKind)>> {
    let mut out = Vec::new();
    for info in runtime_inputs(model.graph()) {
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
                        &model.path,
                        format!("input '{name}' does not declare static heads and head_dim (dims 1 and 3); cannot build an empty cache"),
                    ))
                }
            }
        } else {
            return Err(Error::graph(
                &model.path,
                format!("input '{name}' is not one a decoder-only LLM export takes (input_ids, attention_mask, position_ids, past_key_values.*, use_cache_branch)"),
            ));
        };
        out.push((name.to_string(), kind));
    }
    if !out
        .iter()
        .any(|(_, k)| matches!(k, InputKind::InputIds { .. }))
    {
        return Err(Error::graph(
            &model.path,
            "the graph has no 'input_ids' input",
        ));
    }
    Ok(out)
}

/// The `logits` output, or the first output.
fn logits_output(graph: &GraphProto) -> Option<String> {
    graph
        .output
        .iter()
        .find(|o| o.name() == "logits")
        .or_else(|| graph.output.first())
        .map(|o| o.name().to_string())
}
