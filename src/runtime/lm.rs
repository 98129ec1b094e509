//! A causal language model session: binds the exporter's inputs by name (token ids, attention
//! mask, position ids, empty past key/values, the merged decoder's `use_cache_branch`) and
//! returns the logits.

use super::{Activation, GraphFeeds, ModelSession, Runtime};
use crate::error::{Error, Result};
use crate::onnx::proto::GraphProto;
use crate::onnx::OnnxModel;
use ndarray::Array2;
use std::collections::HashMap;
use std::path::PathBuf;

/// A loaded causal LM: scores token windows and generates text.
pub struct CausalLm {
    path: PathBuf,
    session: ModelSession,
    feeds: GraphFeeds,
    logits: String,
    /// `(present output, past input)` pairs of the KV cache.
    cache: Vec<(String, String)>,
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
        let feeds = GraphFeeds::new(model, &inputs)?;
        let logits = logits_output(graph).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        // present.N.key feeds past_key_values.N.key on the next step.
        let cache = graph
            .output
            .iter()
            .filter_map(|o| {
                let suffix = o.name().strip_prefix("present")?;
                let past = format!("past_key_values{suffix}");
                inputs
                    .iter()
                    .any(|i| i.name() == past)
                    .then(|| (o.name().to_string(), past))
            })
            .collect();
        let session = ModelSession::open_file(runtime, &model.path)?;
        Ok(Self {
            path: model.path.clone(),
            session,
            feeds,
            logits,
            cache,
        })
    }

    /// Runs one window of token ids and returns the logits, `[ids.len(), vocab]`.
    pub fn logits(&mut self, ids: &[i64]) -> Result<Array2<f32>> {
        let feeds = self.feeds.values(ids)?;
        let (logits, _) = self.step(&feeds, &[])?;
        let [batch, seq, vocab] = logits.shape()[..] else {
            return Err(self.bad_logits(&logits, ids.len()));
        };
        if batch != 1 || seq != ids.len() {
            return Err(self.bad_logits(&logits, ids.len()));
        }
        Array2::from_shape_vec((seq, vocab), logits.to_f32()?.into_owned())
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// Generates `batch` sequences of `len` tokens that start with `bos`, with the KV cache;
    /// `pick` chooses each next token from a row of logits (e.g. by seeded sampling).
    pub fn generate(
        &mut self,
        batch: usize,
        len: usize,
        bos: i64,
        mut pick: impl FnMut(&[f32]) -> i64,
    ) -> Result<Vec<Vec<i64>>> {
        if self.cache.is_empty() {
            return Err(Error::unsupported(
                &self.path,
                "the model has no KV cache (present.* outputs for past_key_values.* inputs), so it cannot write its own calibration text",
                "pass calibration text with --calib",
            ));
        }
        let mut sequences = vec![vec![bos]; batch];
        let mut past: HashMap<String, Activation> = HashMap::new();
        let presents: Vec<String> = self.cache.iter().map(|(p, _)| p.clone()).collect();
        for t in 0..len.saturating_sub(1) {
            let next: Vec<i64> = sequences.iter().map(|s| s[t]).collect();
            let feeds = self.feeds.step(&next, batch, t, &mut past)?;
            let (logits, cache) = self.step(&feeds, &presents)?;
            let vocab = *logits.shape().last().unwrap_or(&0);
            for (s, row) in sequences
                .iter_mut()
                .zip(logits.to_f32()?.chunks_exact(vocab.max(1)))
            {
                s.push(pick(row));
            }
            past = self
                .cache
                .iter()
                .map(|(_, input)| input.clone())
                .zip(cache)
                .collect();
        }
        Ok(sequences)
    }

    /// One run: the logits and the requested extra outputs.
    fn step(
        &mut self,
        feeds: &[(String, Activation)],
        extra: &[String],
    ) -> Result<(Activation, Vec<Activation>)> {
        let inputs: Vec<(&str, &Activation)> = feeds.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let mut names = vec![self.logits.clone()];
        names.extend_from_slice(extra);
        let mut outputs = self.session.run(&inputs, &names)?.into_iter();
        let logits = outputs
            .next()
            .ok_or_else(|| Error::internal("a run gave no logits"))?;
        Ok((logits, outputs.collect()))
    }

    fn bad_logits(&self, logits: &Activation, seq: usize) -> Error {
        Error::graph(
            &self.path,
            format!(
                "output '{}' has shape {:?}; expected [1, {seq}, vocab]",
                self.logits,
                logits.shape()
            ),
        )
    }
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
