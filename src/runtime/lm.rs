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

    /// The model file this LM runs.
    pub fn path(&self) -> &std::path::Path {
        &self.path
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

    /// Whether the model hands its keys and values back (`present.*` for `past_key_values.*`),
    /// so that generation feeds one new token per step instead of the whole prefix.
    pub fn has_cache(&self) -> bool {
        !self.cache.is_empty()
    }

    /// Continues each of `prompts` (token ids, all of one length) to `len` tokens; `pick`
    /// chooses each next token from a row of logits (e.g. by seeded sampling), given the index of
    /// the prompt in `prompts` and the position the token takes; an error from `pick` ends the
    /// generation with that error. With a KV cache the
    /// first step runs the prompts and every later step feeds one token per sequence; without one,
    /// each step runs the whole prefix again (about `len²/2` token positions per sequence instead
    /// of `len`) and reads the last position's logits.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i64>],
        len: usize,
        mut pick: impl FnMut(usize, usize, &[f32]) -> Result<i64>,
    ) -> Result<Vec<Vec<i64>>> {
        let batch = prompts.len();
        let mut sequences = prompts.to_vec();
        let prompt_len = sequences.first().map_or(0, Vec::len);
        if prompt_len == 0 || sequences.iter().any(|s| s.len() != prompt_len) {
            return Err(Error::internal(
                "generation prompts must be non-empty and of one length",
            ));
        }
        let mut past: HashMap<String, Activation> = HashMap::new();
        let presents: Vec<String> = self.cache.iter().map(|(p, _)| p.clone()).collect();
        for t in prompt_len..len {
            // Tokens already in the cache, and the ones this step feeds.
            let cached = if self.has_cache() && t > prompt_len {
                t - 1
            } else {
                0
            };
            let ids: Vec<i64> = sequences
                .iter()
                .flat_map(|s| s[cached..].iter().copied())
                .collect();
            let feeds = self.feeds.step(&ids, batch, cached, &mut past)?;
            let (logits, cache) = self.step(&feeds, &presents)?;
            let [rows, seq, vocab] = logits.shape()[..] else {
                return Err(self.bad_logits(&logits, t - cached));
            };
            if rows != batch || seq != t - cached || vocab == 0 {
                return Err(self.bad_logits(&logits, t - cached));
            }
            let values = logits.to_f32()?;
            for (i, (s, row)) in sequences
                .iter_mut()
                .zip(values.chunks_exact(seq * vocab))
                .enumerate()
            {
                s.push(pick(i, t, &row[(seq - 1) * vocab..])?);
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
                "output '{}' has shape {:?}; expected [batch, {seq}, vocab]",
                self.logits,
                logits.shape()
            ),
        )
    }
}

/// The name of a causal LM's logits: the graph output `logits`, or its first output.
pub fn logits_output(graph: &GraphProto) -> Option<String> {
    graph
        .output
        .iter()
        .find(|o| o.name() == "logits")
        .or_else(|| graph.output.first())
        .map(|o| o.name().to_string())
}

/// About how much memory ONNX Runtime takes to open `model` whole, in bytes: every initializer
/// of every graph at its stored size, 16-bit floats at fp32's (ONNX Runtime's constant folding
/// turns the weights behind their `Cast`s into fp32 copies: opening the 4.86 GB fp16 test model
/// took 9.3 GB, docs/big-models.md). A lower bound: activations and the session's own memory come
/// on top.
pub fn whole_model_bytes(model: &OnnxModel) -> u64 {
    graph_bytes(model.graph())
}

/// [`whole_model_bytes`] of `graph` and its subgraphs.
fn graph_bytes(graph: &GraphProto) -> u64 {
    let mut total = 0u64;
    // A graph nested too deep was refused when the model was loaded.
    let _ = crate::onnx::visit_graphs(graph, &mut |_, graph, _| {
        for tensor in &graph.initializer {
            let numel = tensor
                .dims
                .iter()
                .map(|&d| d.max(0) as u64)
                .product::<u64>();
            total = total.saturating_add(numel.saturating_mul(element_bytes(tensor.data_type())));
        }
    });
    total
}

/// Bytes per element that ONNX Runtime holds for an initializer of ONNX type `data_type`
/// (16-bit floats as fp32; 4-bit types rounded up to a byte).
fn element_bytes(data_type: i32) -> u64 {
    use crate::onnx::proto::tensor_proto::DataType;
    match DataType::try_from(data_type) {
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64) => 8,
        Ok(DataType::Complex128) => 16,
        Ok(
            DataType::Int8
            | DataType::Uint8
            | DataType::Bool
            | DataType::Int4
            | DataType::Uint4
            | DataType::Float8e4m3fn
            | DataType::Float8e4m3fnuz
            | DataType::Float8e5m2
            | DataType::Float8e5m2fnuz,
        ) => 1,
        Ok(DataType::Int16 | DataType::Uint16) => 2,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::graph_bytes;
    use crate::onnx::proto::tensor_proto::DataType;
    use crate::onnx::proto::{attribute_proto, AttributeProto, GraphProto, NodeProto, TensorProto};

    fn tensor(dims: &[i64], data_type: DataType) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type as i32),
            ..Default::default()
        }
    }

    #[test]
    fn sixteen_bit_floats_count_as_fp32_and_subgraphs_count_too() {
        let branch = GraphProto {
            initializer: vec![tensor(&[10], DataType::Int8)],
            ..Default::default()
        };
        let graph = GraphProto {
            initializer: vec![
                tensor(&[3, 4], DataType::Float16),
                tensor(&[3, 4], DataType::Bfloat16),
                tensor(&[2, 5], DataType::Float),
                tensor(&[5], DataType::Int64),
            ],
            node: vec![NodeProto {
                op_type: Some("If".into()),
                attribute: vec![AttributeProto {
                    name: Some("then_branch".into()),
                    r#type: Some(attribute_proto::AttributeType::Graph as i32),
                    g: Some(branch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        // 12 × 4 twice, 10 × 4, 5 × 8, and the branch's 10 × 1.
        assert_eq!(graph_bytes(&graph), 48 + 48 + 40 + 40 + 10);
    }
}
