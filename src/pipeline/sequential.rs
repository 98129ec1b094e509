//! Sequential block-wise pruning (spec §0.3): for each block, run it dense on the current inputs
//! of every calibration window and collect its linears' input statistics, prune its linears, run
//! it again pruned, and feed its outputs to the next block.

use super::staged::StagedRun;
use super::PrunedWeights;
use crate::allocate::SparsityPlan;
use crate::error::{Error, Result};
use crate::graph::{Discovery, Layout, Linear, Partition, StageKind};
use crate::onnx::{OnnxModel, TensorKey};
use crate::progress::Progress;
use crate::prune::{prune_matrix, ActivationStats, PruneMethod};
use crate::runtime::{Activation, Runtime};
use std::collections::HashMap;
use std::time::Instant;

/// Where the time of a sequential pass went, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SequentialTimings {
    /// ONNX Runtime: prefix and block runs (dense and pruned).
    pub forward: f64,
    /// Accumulating activation statistics.
    pub statistics: f64,
    /// Scores, masks and weight updates.
    pub masks: f64,
}

/// Prunes every linear of `discovery` block by block on `windows`, with pruned outputs fed forward.
pub fn prune_sequential(
    model: &OnnxModel,
    discovery: &Discovery,
    runtime: &Runtime,
    windows: &[Vec<i64>],
    method: PruneMethod,
    plan: &SparsityPlan,
    progress: &Progress,
) -> Result<(PrunedWeights, SequentialTimings)> {
    let mut timings = SequentialTimings::default();
    let partition = Partition::new(model, discovery)?;
    let clock = Instant::now();
    let mut run = StagedRun::start(model, &partition, runtime, windows)?;
    timings.forward += clock.elapsed().as_secs_f64();
    let index: HashMap<&TensorKey, usize> = discovery
        .linears
        .iter()
        .enumerate()
        .map(|(i, l)| (&l.weight, i))
        .collect();
    let mut pruned = PrunedWeights::default();
    let blocks = partition.blocks().count();
    let mut done = 0;
    while !run.at_suffix() {
        let StageKind::Block(block) = run.stage().kind else {
            return Err(Error::Runtime(
                "the partition has no block where one was expected".into(),
            ));
        };
        progress.item("blocks", done, blocks);
        let linears: Vec<&Linear> = discovery.block(block).collect();
        // One capture per distinct input tensor (q, k and v read the same one).
        let mut captures: Vec<String> = Vec::new();
        let mut stats: Vec<ActivationStats> = Vec::new();
        let mut source: Vec<usize> = Vec::new();
        for l in &linears {
            let input = capture_of(l);
            let k = captures.iter().position(|c| c == input).unwrap_or_else(|| {
                captures.push(input.to_string());
                stats.push(ActivationStats::new(
                    l.in_features,
                    method == PruneMethod::Sparsegpt,
                ));
                captures.len() - 1
            });
            source.push(k);
        }
        let clock = Instant::now();
        let mut session = run.open(&linears, &captures)?;
        timings.forward += clock.elapsed().as_secs_f64();
        let dense: Vec<Activation> = linears
            .iter()
            .map(|l| weight_value(model, l, None))
            .collect::<Result<_>>()?;
        let feeds: Vec<(&str, &Activation)> = linears
            .iter()
            .map(|l| l.weight.name.as_str())
            .zip(&dense)
            .collect();

        // Dense pass: statistics of every linear's input.
        for w in 0..run.windows() {
            let clock = Instant::now();
            let outputs = run.run(&mut session, w, &feeds, &captures)?;
            timings.forward += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            for ((s, x), name) in stats.iter_mut().zip(&outputs).zip(&captures) {
                let shape = x.shape();
                if shape.last() != Some(&s.channels) {
                    return Err(Error::Runtime(format!(
                        "activation '{name}' has shape {shape:?}; expected {} channels last",
                        s.channels
                    )));
                }
                s.add(x.as_f32()?);
            }
            timings.statistics += clock.elapsed().as_secs_f64();
        }

        // Prune, then the pruned pass feeds the next block.
        let clock = Instant::now();
        let mut pruned_values = Vec::with_capacity(linears.len());
        for (l, &k) in linears.iter().zip(&source) {
            let i = index[&l.weight];
            let mut weights = l.read_out_in(model)?;
            prune_matrix(
                method,
                &l.weight.name,
                &mut weights,
                l.out_features,
                l.in_features,
                Some(&stats[k]),
                &plan.rules[i],
            )?;
            let bytes = l.encode_out_in(&weights);
            pruned_values.push(weight_value(model, l, Some(&bytes))?);
            pruned.record(
                l,
                &weights,
                plan.rules[i].mean_sparsity(l.out_features),
                Some(bytes),
            );
        }
        timings.masks += clock.elapsed().as_secs_f64();
        let feeds: Vec<(&str, &Activation)> = linears
            .iter()
            .map(|l| l.weight.name.as_str())
            .zip(&pruned_values)
            .collect();
        let clock = Instant::now();
        run.advance(session, &feeds)?;
        timings.forward += clock.elapsed().as_secs_f64();
        done += 1;
    }
    progress.item("blocks", blocks, blocks);
    Ok((pruned, timings))
}

/// The activation a linear multiplies, in the decoder the partition runs (the no-cache branch of
/// a merged decoder).
fn capture_of(linear: &Linear) -> &str {
    linear
        .nodes
        .iter()
        .find(|n| n.graph.is_empty() || n.graph.ends_with("/else_branch"))
        .unwrap_or(&linear.nodes[0])
        .input
        .as_str()
}

/// A linear's weight as a stage input, in its stored layout and type: `bytes` when given, else
/// the model's own.
fn weight_value(model: &OnnxModel, linear: &Linear, bytes: Option<&[u8]>) -> Result<Activation> {
    let dims = match linear.layout {
        Layout::InOut => [linear.in_features, linear.out_features],
        Layout::OutIn => [linear.out_features, linear.in_features],
    };
    match bytes {
        Some(b) => Activation::weight(linear.dtype, &dims, b),
        None => {
            let tensor = model
                .initializer(&linear.weight)
                .ok_or_else(|| Error::tensor(&linear.weight.name, "is no longer in the model"))?;
            let b = model.tensor_bytes(&linear.weight.graph, tensor)?;
            Activation::weight(linear.dtype, &dims, &b)
        }
    }
}
