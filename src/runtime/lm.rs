//! A causal language model session: binds the exporter's inputs by name (token ids, attention
//! mask, position ids, empty past key/values, the merged decoder's `use_cache_branch`) and
//! returns the logits.

use super::{GraphFeeds, Runtime};
use crate::error::{Error, Result};
use crate::onnx::proto::GraphProto;
use crate::onnx::OnnxModel;
use ndarray::Array2;
use ort::session::{RunOptions, Session, SessionInputValue};
use std::borrow::Cow;

/// A loaded causal LM ready to score token windows (batch 1).
pub struct CausalLm {
    session: Session,
    feeds: GraphFeeds,
    logits: String,
}

impl CausalLm {
    /// Opens `model` in ONNX Runtime and works out how to feed it from its graph inputs.
    pub fn open(runtime: &Runtime, model: &OnnxModel) -> Result<Self> {
        let graph = model.graph();
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name()))
            .cloned()
            .collect();
        let feeds = GraphFeeds::new(&model.path, &inputs)?;
        let logits = logits_output(graph).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        let session = runtime.session(&model.path)?;
        Ok(Self {
            session,
            feeds,
            logits,
        })
    }

    /// Runs one window of token ids and returns the logits, `[ids.len(), vocab]`.
    pub fn logits(&mut self, ids: &[i64]) -> Result<Array2<f32>> {
        let seq = ids.len();
        let feeds = self.feeds.values(ids)?;
        let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = feeds
            .iter()
            .map(|(name, value)| (Cow::Borrowed(name.as_str()), value.input()))
            .collect();
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

/// The `logits` output, or the first output.
fn logits_output(graph: &GraphProto) -> Option<String> {
    graph
        .output
        .iter()
        .find(|o| o.name() == "logits")
        .or_else(|| graph.output.first())
        .map(|o| o.name().to_string())
}
