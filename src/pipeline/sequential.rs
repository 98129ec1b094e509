//! Sequential block-wise pruning (docs/methods.md §0.3): for each block, run it dense on the current inputs
//! of every calibration window and collect its linears' input statistics (summed per window on
//! the host, or in the stage model with CUDA: [`SumsSite`]), prune its linears, run it again
//! pruned, and feed its outputs to the next block. The same pass, on a few windows and a
//! candidate allocation, measures NeuroAL's neuron alignment (docs/methods.md §1.2).

use super::carry::SpillPolicy;
use super::outputs::PrunedWeights;
use super::staged::{initializer_value, StagedRun};
use crate::allocate::SparsityPlan;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::graph::{Discovery, Layout, Linear, Partition, StageKind};
use crate::onnx::{ModelWriter, OnnxModel, TensorKey};
use crate::progress::Progress;
use crate::prune::{prune_matrix, reconstruct, ActivationStats, ChannelSums, Masker, PruneMethod};
use crate::report::SequentialTimings;
use crate::runtime::{Activation, ModelSession, Runtime};
use std::collections::HashMap;
use std::time::Instant;

/// A linear's input-channel norms with its block dense and pruned, on the same inputs.
#[derive(Clone, Debug)]
pub struct Alignment {
    /// `a^dense`, one entry per input channel.
    pub dense: Vec<f32>,
    /// `a^sparse`.
    pub sparse: Vec<f32>,
}

/// What one pass produced.
pub(crate) struct Pass {
    /// The sparsity of every pruned matrix (and their compressed sizes when written).
    pub pruned: PrunedWeights,
    /// Per linear in discovery order, when alignment was measured.
    pub alignment: Vec<Alignment>,
}

/// The default masker of a pruner.
static CPU_MASKER: Masker = Masker::Cpu;

/// Runs sequential passes over one model, reusing one session per stage across passes (the
/// prunable weights are stage inputs, so every candidate allocation shares them).
pub(crate) struct SequentialPruner<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    runtime: &'a Runtime,
    method: PruneMethod,
    /// Refine masks with DSnoT (attention projections only, as the reference does).
    dsnot: bool,
    /// Re-fit the kept weights after each mask (`--reconstruct`).
    reconstruct: bool,
    /// Feed each block's dense outputs forward instead of its pruned ones.
    feed_dense: bool,
    /// Where masks are computed (the CPU unless [`Self::with_masker`] says otherwise).
    masker: &'a Masker,
    partition: Partition,
    /// Where a pass's carried hidden states go beyond their share of the memory budget.
    spill: Option<SpillPolicy>,
    /// Keep stage sessions between passes (memory for speed: worth it for searches only).
    reuse_sessions: bool,
    sessions: HashMap<usize, ModelSession>,
    index: HashMap<&'a TensorKey, usize>,
    /// Time spent so far.
    pub timings: SequentialTimings,
    /// Where the last pass summed the activations.
    sums_site: Option<SumsSite>,
}

impl<'a> SequentialPruner<'a> {
    /// Partitions the model for `method`; `dsnot` refines its masks with DSnoT.
    pub fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
        runtime: &'a Runtime,
        method: PruneMethod,
        dsnot: bool,
    ) -> Result<Self> {
        Ok(Self {
            model,
            discovery,
            runtime,
            method,
            dsnot,
            reconstruct: false,
            feed_dense: false,
            masker: &CPU_MASKER,
            partition: Partition::new(model, discovery)?,
            spill: None,
            reuse_sessions: false,
            sessions: HashMap::new(),
            index: discovery
                .linears
                .iter()
                .enumerate()
                .map(|(i, l)| (&l.weight, i))
                .collect(),
            timings: SequentialTimings::default(),
            sums_site: None,
        })
    }

    /// Keeps every stage's session after a pass, so that the next pass (a search candidate)
    /// skips building them again; costs one session's memory per block.
    pub fn reuse_sessions(mut self) -> Self {
        self.reuse_sessions = true;
        self
    }

    /// Re-fits the kept weights of every matrix after its mask, on the Hessian of its inputs in
    /// the block's dense run (`--reconstruct`: the final pass only; the search ranks the masks
    /// alone).
    pub fn reconstruct(mut self, reconstruct: bool) -> Self {
        self.reconstruct = reconstruct;
        self
    }

    /// Feeds each block's dense outputs forward instead of its pruned ones, so that every
    /// block's statistics come from the dense model's own hidden states: the masks that
    /// `--top-up evo` scored (docs/methods.md §5.2). Not with alignment measured.
    pub fn feed_dense(mut self, feed_dense: bool) -> Self {
        self.feed_dense = feed_dense;
        self
    }

    /// Writes the hidden states of a pass's windows to disk once those in memory reach
    /// `policy`'s limit (`None`: all stay in memory).
    pub fn spill_beyond(mut self, policy: Option<SpillPolicy>) -> Self {
        self.spill = policy;
        self
    }

    /// Computes masks with `masker` (the CUDA kernels, say) instead of the CPU.
    pub fn with_masker(mut self, masker: &'a Masker) -> Self {
        self.masker = masker;
        self
    }

    /// The partition the passes run on.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Where the last pass summed the linears' input activations (none before the first pass).
    pub fn sums_site(&self) -> Option<SumsSite> {
        self.sums_site
    }

    /// Prunes every linear block by block on `windows` under `plan`, pruned outputs fed forward
    /// (dense ones with [`Self::feed_dense`]), starting from the model's dense weights. Each
    /// pruned matrix goes to `output` as soon as it is pruned, when given; `measure` records
    /// every linear's [`Alignment`].
    pub fn run(
        &mut self,
        windows: &[Vec<i64>],
        plan: &SparsityPlan,
        mut output: Option<&mut ModelWriter<'_>>,
        measure: bool,
        progress: &Progress,
    ) -> Result<Pass> {
        let (model, discovery, method) = (self.model, self.discovery, self.method);
        if measure && self.feed_dense {
            return Err(Error::internal(
                "alignment is measured with pruned outputs fed forward",
            ));
        }
        let clock = Instant::now();
        let mut run = StagedRun::new(model, &self.partition, self.runtime, windows)?
            .spill_beyond(self.spill.clone());
        let prefix = session(&mut self.sessions, &mut run, &[], &[], &[])?;
        run.advance(prefix, &[], &[], |_, _| Ok(()))?;
        let site = sums_site(self.runtime.device())?; // the device is known once a session opened
        self.sums_site = Some(site);
        if !self.reuse_sessions {
            self.sessions.clear();
        }
        self.timings.forward += clock.elapsed().as_secs_f64();
        let mut pruned = PrunedWeights::default();
        let mut alignment = vec![None; discovery.linears.len()];
        let blocks = self.partition.blocks().count();
        let mut done = 0;
        while !run.at_suffix() {
            let StageKind::Block(block) = run.stage().kind else {
                return Err(Error::internal(
                    "the partition has no block where one was expected",
                ));
            };
            progress.item("blocks", done, blocks);
            let linears: Vec<&Linear> = discovery.block(block).collect();
            // One capture per distinct input tensor (q, k and v read the same one).
            let mut activations: Vec<ChannelSums> = Vec::new();
            let mut source: Vec<usize> = Vec::new();
            for l in &linears {
                let input = capture_of(l);
                let k = activations
                    .iter()
                    .position(|c| c.activation == input)
                    .unwrap_or_else(|| {
                        activations.push(ChannelSums {
                            activation: input.to_string(),
                            channels: l.in_features,
                        });
                        activations.len() - 1
                    });
                source.push(k);
            }
            let gram = method == PruneMethod::Sparsegpt || self.reconstruct;
            let capture = BlockCapture { activations, site };
            let mut dense_stats: Vec<ActivationStats> = capture
                .activations
                .iter()
                .map(|c| ActivationStats::new(c.channels, gram))
                .collect();
            let mut sparse_stats: Vec<ActivationStats> = capture
                .activations
                .iter()
                .map(|c| ActivationStats::new(c.channels, false))
                .collect();
            let (dense_outputs, sparse_outputs) = (capture.outputs(gram), capture.outputs(false));
            let clock = Instant::now();
            let stage_session = session(
                &mut self.sessions,
                &mut run,
                &linears,
                &capture.whole(gram),
                capture.sums(),
            )?;
            self.timings.forward += clock.elapsed().as_secs_f64();
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
                let outputs = run.run(stage_session, w, &feeds, &dense_outputs)?;
                self.timings.forward += clock.elapsed().as_secs_f64();
                let clock = Instant::now();
                capture.add(&mut dense_stats, &outputs)?;
                self.timings.statistics += clock.elapsed().as_secs_f64();
            }
            drop(feeds);
            // One copy of the block's weights at a time, unless the dense ones go forward.
            let dense = if self.feed_dense { dense } else { Vec::new() };

            // Prune, then the pruned pass feeds the next block.
            let mut pruned_values = Vec::with_capacity(linears.len());
            for (l, &k) in linears.iter().zip(&source) {
                let clock = Instant::now();
                let rule = &plan.rules[self.index[&l.weight]];
                let mut weights = l.read_out_in(model)?;
                let dense_weights = self.reconstruct.then(|| weights.clone());
                let order = prune_matrix(
                    method,
                    &l.weight.name,
                    &mut weights,
                    l.out_features,
                    l.in_features,
                    Some(&dense_stats[k]),
                    rule,
                    // DSnoT leaves the MLP alone (the reference's skip_layer).
                    self.dsnot && !l.is_mlp(),
                    self.masker,
                )?;
                if let Some(dense_weights) = &dense_weights {
                    let hessian = dense_stats[k].hessian().ok_or_else(|| {
                        Error::internal("--reconstruct: no Hessian was accumulated")
                    })?;
                    reconstruct(
                        &l.weight.name,
                        dense_weights,
                        &mut weights,
                        l.out_features,
                        l.in_features,
                        &hessian,
                    )?;
                }
                let bytes = l.encode_out_in(&weights);
                pruned_values.push(weight_value(model, l, Some(&bytes))?);
                pruned.record(l, &weights, rule.mean_sparsity(l.out_features));
                self.timings.masks += clock.elapsed().as_secs_f64();
                if let Some(out) = output.as_deref_mut() {
                    pruned.write_pruned(model, l, (&weights, &bytes), order.as_deref(), out)?;
                }
            }
            let forward = if self.feed_dense {
                &dense
            } else {
                &pruned_values
            };
            let feeds: Vec<(&str, &Activation)> = linears
                .iter()
                .map(|l| l.weight.name.as_str())
                .zip(forward)
                .collect();
            let clock = Instant::now();
            let measured: &[String] = if measure { &sparse_outputs } else { &[] };
            run.advance(
                stage_session,
                &feeds,
                measured,
                |_, outputs| match measure {
                    true => capture.add(&mut sparse_stats, &outputs),
                    false => Ok(()),
                },
            )?;
            self.timings.forward += clock.elapsed().as_secs_f64();
            if !self.reuse_sessions {
                self.sessions.remove(&(run.stage_index() - 1));
            }
            if measure {
                for (l, &k) in linears.iter().zip(&source) {
                    alignment[self.index[&l.weight]] = Some(Alignment {
                        dense: dense_stats[k].norms(),
                        sparse: sparse_stats[k].norms(),
                    });
                }
            }
            done += 1;
        }
        progress.item("blocks", blocks, blocks);
        Ok(Pass {
            pruned,
            alignment: alignment.into_iter().flatten().collect(),
        })
    }
}

/// The cached session of the next stage, opened on first use.
pub(super) fn session<'s>(
    sessions: &'s mut HashMap<usize, ModelSession>,
    run: &mut StagedRun,
    weights: &[&Linear],
    captures: &[String],
    sums: &[ChannelSums],
) -> Result<&'s mut ModelSession> {
    match sessions.entry(run.stage_index()) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => {
            Ok(e.insert(run.open(weights, captures, sums)?))
        }
    }
}

/// Where a pass sums the linears' input activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumsSite {
    /// In the stage models ([`ChannelSums`]): the default on CUDA, where the activations then
    /// stay on the device.
    Model,
    /// On the host, from the whole activations: the default on the CPU, where the stage model's
    /// float64 intermediates cost more than the host's one pass over each activation.
    Host,
}

impl SumsSite {
    /// Its name in reports and in `NEUROAL_ONNX_SUMS`.
    pub fn name(self) -> &'static str {
        match self {
            SumsSite::Model => "model",
            SumsSite::Host => "host",
        }
    }
}

/// The [`SumsSite`] for sessions on `device`, or the one `NEUROAL_ONNX_SUMS` (`model` or `host`;
/// unset or empty for the default) names: both give the same sums in the same order, and the
/// variable is there to test that and to measure the difference on a GPU.
fn sums_site(device: Device) -> Result<SumsSite> {
    let chosen = std::env::var("NEUROAL_ONNX_SUMS").unwrap_or_default();
    match chosen.as_str() {
        "model" => Ok(SumsSite::Model),
        "host" => Ok(SumsSite::Host),
        "" if device == Device::Cuda => Ok(SumsSite::Model),
        "" => Ok(SumsSite::Host),
        other => Err(Error::invalid(
            "NEUROAL_ONNX_SUMS",
            format!("'{other}': expected model or host, or leave it unset"),
        )),
    }
}

/// What a block's stage runs hand out for the statistics of its linears' distinct inputs.
struct BlockCapture {
    /// The distinct inputs.
    activations: Vec<ChannelSums>,
    site: SumsSite,
}

impl BlockCapture {
    /// The sums the stage model takes: every activation's, or none when the host takes them.
    fn sums(&self) -> &[ChannelSums] {
        match self.site {
            SumsSite::Model => &self.activations,
            SumsSite::Host => &[],
        }
    }

    /// The activations a run hands out whole: for the host's sums, or for XᵀX (`gram`).
    fn whole(&self, gram: bool) -> Vec<String> {
        if self.site == SumsSite::Host || gram {
            self.activations
                .iter()
                .map(|c| c.activation.clone())
                .collect()
        } else {
            Vec::new()
        }
    }

    /// The outputs to ask a run for: the stage model's sums, then the whole activations.
    fn outputs(&self, gram: bool) -> Vec<String> {
        self.sums()
            .iter()
            .flat_map(ChannelSums::outputs)
            .chain(self.whole(gram))
            .collect()
    }

    /// Adds one window's [`Self::outputs`] to `stats` (one per activation): the model's sums,
    /// else the host's of the whole activation; XᵀX from the whole activation when `stats`
    /// accumulate it.
    fn add(&self, stats: &mut [ActivationStats], outputs: &[Activation]) -> Result<()> {
        let reduced = 3 * self.sums().len();
        if outputs.len() < reduced {
            return Err(Error::internal(format!(
                "a stage gave {} outputs for the sums of {} activations",
                outputs.len(),
                self.sums().len()
            )));
        }
        let (reduced, whole) = outputs.split_at(reduced);
        for (k, (s, c)) in stats.iter_mut().zip(&self.activations).enumerate() {
            let x = whole.get(k);
            if let Some(x) = x {
                if x.shape().last() != Some(&c.channels) {
                    return Err(shape_error(c, &x.shape()));
                }
            }
            match (self.site, x) {
                (SumsSite::Model, x) => {
                    let [sumsq, sum, shape] = &reduced[3 * k..3 * k + 3] else {
                        unreachable!("three outputs per activation")
                    };
                    let shape = shape.as_i64()?;
                    if shape.last() != Some(&(c.channels as i64)) {
                        return Err(shape_error(c, shape));
                    }
                    let tokens = shape[..shape.len() - 1].iter().product::<i64>().max(0);
                    s.add_window(sumsq.as_f64()?, sum.as_f64()?, tokens as usize);
                    if let Some(x) = x {
                        s.add_gram(&x.to_f32()?);
                    }
                }
                (SumsSite::Host, Some(x)) => s.add(&x.to_f32()?),
                (SumsSite::Host, None) => {
                    return Err(Error::internal(format!(
                        "a stage gave no activation '{}'",
                        c.activation
                    )))
                }
            }
        }
        Ok(())
    }
}

/// An activation whose last dimension is not its linear's input channels.
fn shape_error(c: &ChannelSums, shape: &[impl std::fmt::Debug]) -> Error {
    Error::internal(format!(
        "activation '{}' has shape {shape:?}; expected {} channels last",
        c.activation, c.channels
    ))
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
pub(super) fn weight_value(
    model: &OnnxModel,
    linear: &Linear,
    bytes: Option<&[u8]>,
) -> Result<Activation> {
    let dims = match linear.layout {
        Layout::InOut => [linear.in_features, linear.out_features],
        Layout::OutIn => [linear.out_features, linear.in_features],
    };
    match bytes {
        Some(b) => Activation::from_le_bytes(linear.dtype, &dims, b),
        None => initializer_value(model, &linear.weight),
    }
}
