//! `--top-up evo` (docs/methods.md §5.2): the allocation searched directly against the dense model's
//! next-token distributions. Each block's masks at any level come from one dense pass's
//! statistics, so a candidate costs one forward pass of the whole model on a few calibration
//! windows and no sequential pass (from its first block that differs from its parent's, when the
//! parent's run is kept); the final pass then prunes sequentially at the chosen levels, as for
//! every other allocation.

use super::allocation::{blocks, dense_norms, plan_from_blocks};
use super::carry::SpillPolicy;
use super::search;
use super::sequential::{session, weight_value};
use super::staged::{Checkpoint, StagedRun};
use super::PruneConfig;
use crate::allocate::evo::{search as evolve, EvoSettings};
use crate::allocate::{EvoStart, NeuroalStep, SparsityPlan};
use crate::error::{Error, Result};
use crate::eval::kl_divergence;
use crate::graph::{Discovery, Linear, Partition, StageKind};
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::prune::{prune_mask, score_matrix, MaskRule, Masker};
use crate::report::{AllocationDetail, EvoEvaluations, SearchReport};
use crate::runtime::{logits_output, Activation, ModelSession, Runtime};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

/// Offspring per generation, ranked on [`FIRST_WINDOWS`].
const OFFSPRING: usize = 8;
/// Offspring that go on to [`FINAL_WINDOWS`].
const SURVIVORS: usize = 2;
/// Windows of the first selection step.
const FIRST_WINDOWS: usize = 1;
/// Windows of the last selection step, at most.
const FINAL_WINDOWS: usize = 4;
/// Tokens of each window the fitness reads, at most.
const TOKENS: usize = 512;
/// Sparsity one move adds to a block.
const STEP: f64 = 0.02;
/// Most moves per mutation.
const MAX_MOVES: usize = 3;

/// The search's settings for `config`.
fn settings(config: &PruneConfig) -> EvoSettings {
    let final_windows = FINAL_WINDOWS.min(config.nsamples).max(1);
    EvoSettings {
        generations: config.evo_generations,
        offspring: OFFSPRING,
        survivors: SURVIVORS,
        first_windows: FIRST_WINDOWS.min(final_windows),
        final_windows,
        tokens: TOKENS.min(config.seqlen),
        step: STEP,
        max_moves: MAX_MOVES,
        seed: config.seed,
    }
}

/// What the evolutionary search chose and did.
pub(crate) struct Searched {
    /// Every linear at its block's chosen level.
    pub plan: SparsityPlan,
    /// The search's start, generations and choice, for the report.
    pub detail: AllocationDetail,
    /// NeuroAL's block step, when it was the start.
    pub neuroal: Option<SearchReport>,
    /// Wall time of the whole search, NeuroAL's block step included, seconds.
    pub seconds: f64,
}

/// Searches per-block sparsity levels from the start `config.evo_start` names (NeuroAL's block
/// step, or uniform).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evo(
    model: &OnnxModel,
    discovery: &Discovery,
    runtime: &Runtime,
    masker: &Masker,
    windows: &[Vec<i64>],
    config: &PruneConfig,
    spill: Option<&SpillPolicy>,
    progress: &Progress,
) -> Result<Searched> {
    let started = Instant::now();
    let groups = blocks(discovery);
    let (start, neuroal) = match config.evo_start {
        EvoStart::Uniform => (vec![config.sparsity; groups.len()], None),
        EvoStart::Neuroal => {
            let block_only = PruneConfig {
                neuroal_step: NeuroalStep::Block,
                ..config.clone()
            };
            let (plan, report) = search::neuroal(
                model,
                discovery,
                runtime,
                masker,
                windows,
                &block_only,
                spill,
                progress,
            )?;
            let levels = groups
                .values()
                .map(|linears| plan.rules[linears[0]].mean_sparsity(1))
                .collect();
            (levels, Some(report))
        }
    };
    let clock = Instant::now();
    let settings = settings(config);
    let params: Vec<f64> = groups
        .values()
        .map(|idx| {
            idx.iter()
                .map(|&i| discovery.linears[i].numel() as f64)
                .sum()
        })
        .collect();
    progress.note(&format!(
        "  evo: a dense pass over {} windows for the masks, then {} generations of {} offspring on {} window(s) and {} on {}, {} tokens each: {} window passes through the whole model",
        windows.len(),
        settings.generations,
        settings.offspring,
        settings.first_windows,
        settings.survivors,
        settings.final_windows,
        settings.tokens,
        settings.final_windows
            + settings.generations
                * (settings.offspring * settings.first_windows
                    + settings.survivors * settings.final_windows)
    ));
    let norms = dense_norms(model, discovery, runtime, windows, spill)?;
    let fitness_windows: Vec<Vec<i64>> = windows[..settings.final_windows]
        .iter()
        .map(|w| w[..w.len().min(settings.tokens)].to_vec())
        .collect();
    let forward = RefCell::new(Forward::new(model, discovery, runtime, fitness_windows)?);
    let variants = RefCell::new(Variants::new(model, discovery, config, &norms, &groups));
    let mut dense_logits = Vec::with_capacity(settings.final_windows);
    let dense = variants.borrow_mut().dense()?;
    forward
        .borrow_mut()
        .logits(settings.final_windows, &dense, false, |_, logits| {
            dense_logits.push(logits);
            Ok(())
        })?;
    drop(dense);
    // A candidate's logits are compared window by window as they come, so that only the dense
    // model's are held (2 GB for 4 windows of 512 tokens over a 262k vocabulary).
    let fitness = |levels: &[f64], n: usize| -> Result<f64> {
        let weights = variants.borrow_mut().weights(levels)?;
        let keep = n == settings.final_windows;
        let (mut total, mut tokens) = (0.0, 0usize);
        forward
            .borrow_mut()
            .logits(n, &weights, keep, |window, logits| {
                let dense = dense_logits.get(window).ok_or_else(|| {
                    Error::internal("--top-up evo: a window without dense logits")
                })?;
                let (sum, count) = kl_sum(dense, &logits)?;
                total += sum;
                tokens += count;
                Ok(())
            })?;
        Ok(total / tokens.max(1) as f64)
    };
    let total = settings.generations;
    progress.item("evo generations", 0, total);
    let outcome = evolve(
        &start,
        &params,
        &settings,
        fitness,
        |g, generation, parent| {
            let mut variants = variants.borrow_mut();
            variants.keep_only(parent);
            forward.borrow_mut().keep_only(&variants.weights(parent)?);
            progress.item("evo generations", g + 1, total);
            if generation.improved {
                progress.note(&format!(
                    "  evo generation {}: KL {:.5} nats/token",
                    g + 1,
                    generation.fitness
                ));
            }
            Ok(())
        },
    )?;
    let detail = AllocationDetail::Evo {
        start: config.evo_start,
        settings,
        start_sparsity: start,
        sparsity: outcome.levels.clone(),
        start_fitness: outcome.start_fitness,
        generations: outcome.generations,
        evaluations: outcome
            .evaluations
            .iter()
            .map(|&(windows, count)| EvoEvaluations { windows, count })
            .collect(),
        seconds: clock.elapsed().as_secs_f64(),
    };
    Ok(Searched {
        plan: plan_from_blocks(discovery, &outcome.levels),
        detail,
        neuroal,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The masked weights of every block at the levels candidates ask for, computed once per block
/// and level from the dense pass's norms and kept while the parent (or this generation's
/// offspring) uses them.
struct Variants<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    config: &'a PruneConfig,
    norms: &'a [Vec<f32>],
    /// Per block in order, the indices of its linears.
    blocks: Vec<Vec<usize>>,
    /// `(block position, level bits)` → its weights as stage inputs.
    cache: HashMap<(usize, u64), Rc<Vec<Activation>>>,
}

impl<'a> Variants<'a> {
    fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
        config: &'a PruneConfig,
        norms: &'a [Vec<f32>],
        groups: &BTreeMap<usize, Vec<usize>>,
    ) -> Self {
        Self {
            model,
            discovery,
            config,
            norms,
            blocks: groups.values().cloned().collect(),
            cache: HashMap::new(),
        }
    }

    /// Every block's dense weights.
    fn dense(&mut self) -> Result<Vec<Rc<Vec<Activation>>>> {
        self.blocks
            .iter()
            .map(|idx| {
                let values = idx
                    .iter()
                    .map(|&i| weight_value(self.model, &self.discovery.linears[i], None))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Rc::new(values))
            })
            .collect()
    }

    /// Every block's weights pruned at its level in `levels`.
    fn weights(&mut self, levels: &[f64]) -> Result<Vec<Rc<Vec<Activation>>>> {
        let mut out = Vec::with_capacity(levels.len());
        for (b, &level) in levels.iter().enumerate() {
            let key = (b, level.to_bits());
            if !self.cache.contains_key(&key) {
                let values = self.blocks[b]
                    .iter()
                    .map(|&i| self.pruned(&self.discovery.linears[i], &self.norms[i], level))
                    .collect::<Result<Vec<_>>>()?;
                self.cache.insert(key, Rc::new(values));
            }
            out.push(self.cache[&key].clone());
        }
        Ok(out)
    }

    /// One linear pruned at `level` (every row at it) by the job's score on the dense norms.
    fn pruned(&self, linear: &Linear, norms: &[f32], level: f64) -> Result<Activation> {
        let mut w = linear.read_out_in(self.model)?;
        let scores = score_matrix(self.config.method, &w, norms)
            .ok_or_else(|| Error::internal("--top-up evo: the method ranks weights by no score"))?;
        prune_mask(
            &scores,
            linear.out_features,
            linear.in_features,
            &MaskRule::Row(level),
        )
        .apply(&mut w);
        weight_value(self.model, linear, Some(&linear.encode_out_in(&w)))
    }

    /// Drops every variant that `levels` (the parent) does not use.
    fn keep_only(&mut self, levels: &[f64]) {
        self.cache
            .retain(|(b, bits), _| levels.get(*b).map(|l| l.to_bits()) == Some(*bits));
    }
}

/// The whole model run stage by stage on (the first of) the fitness windows, with every block's
/// weights given, for its logits. Runs it is told to keep are saved before every block, so that a
/// later run whose first blocks have the same weights starts where they end: an offspring
/// differs from its parent in a few blocks only.
struct Forward<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    runtime: &'a Runtime,
    partition: Partition,
    sessions: HashMap<usize, ModelSession>,
    logits: String,
    windows: Vec<Vec<i64>>,
    saved: Vec<Saved>,
}

/// A kept run: its blocks' weights, and the run just before each block.
struct Saved {
    blocks: Vec<Rc<Vec<Activation>>>,
    before: Vec<Checkpoint>,
}

impl<'a> Forward<'a> {
    fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
        runtime: &'a Runtime,
        windows: Vec<Vec<i64>>,
    ) -> Result<Self> {
        let logits = logits_output(model.graph()).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        Ok(Self {
            model,
            discovery,
            runtime,
            partition: Partition::new(model, discovery)?,
            sessions: HashMap::new(),
            logits,
            windows,
            saved: Vec::new(),
        })
    }

    /// Runs the first `n` windows with block `k` (in order) on `weights[k]` and hands each
    /// window's logits to `each` (window index, logits) in window order; `keep` saves the run for
    /// later ones to resume from.
    fn logits(
        &mut self,
        n: usize,
        weights: &[Rc<Vec<Activation>>],
        keep: bool,
        mut each: impl FnMut(usize, Activation) -> Result<()>,
    ) -> Result<()> {
        // The kept run sharing the most leading blocks (the same weights, not equal ones).
        let shared = |s: &Saved| {
            s.blocks
                .iter()
                .zip(weights)
                .take_while(|(a, b)| Rc::ptr_eq(a, b))
                .count()
                .min(s.before.len().saturating_sub(1))
        };
        let resume = self
            .saved
            .iter()
            .filter(|s| s.before.first().is_some_and(|c| c.windows() >= n))
            .map(|s| (shared(s), s))
            .max_by_key(|(d, _)| *d)
            .filter(|(d, _)| *d > 0);
        let (mut run, mut position, mut before) = match resume {
            Some((d, s)) => (
                StagedRun::resume(self.model, &self.partition, self.runtime, &s.before[d], n),
                d,
                s.before[..d].to_vec(),
            ),
            None => (
                StagedRun::new(
                    self.model,
                    &self.partition,
                    self.runtime,
                    &self.windows[..n],
                )?,
                0,
                Vec::new(),
            ),
        };
        while !run.at_suffix() {
            let linears: Vec<&Linear> = match run.stage().kind {
                StageKind::Block(block) => self.discovery.block(block).collect(),
                _ => Vec::new(),
            };
            let values: &[Activation] = if linears.is_empty() {
                &[]
            } else {
                if keep {
                    before.push(run.checkpoint());
                }
                position += 1;
                weights
                    .get(position - 1)
                    .ok_or_else(|| Error::internal("--top-up evo: a block without weights"))?
            };
            let feeds: Vec<(&str, &Activation)> = linears
                .iter()
                .map(|l| l.weight.name.as_str())
                .zip(values)
                .collect();
            let stage = session(&mut self.sessions, &mut run, &linears, &[], &[])?;
            run.advance(stage, &feeds, &[], |_, _| Ok(()))?;
        }
        let suffix = session(&mut self.sessions, &mut run, &[], &[], &[])?;
        let wanted = [self.logits.clone()];
        for w in 0..run.windows() {
            let logits = run
                .run(suffix, w, &[], &wanted)?
                .pop()
                .ok_or_else(|| Error::internal("the suffix gave no logits"))?;
            each(w, logits)?;
        }
        if keep {
            self.saved.push(Saved {
                blocks: weights.to_vec(),
                before,
            });
        }
        Ok(())
    }

    /// Drops every kept run but those of `parent`'s weights.
    fn keep_only(&mut self, parent: &[Rc<Vec<Activation>>]) {
        self.saved.retain(|s| {
            s.blocks.len() == parent.len()
                && s.blocks.iter().zip(parent).all(|(a, b)| Rc::ptr_eq(a, b))
        });
    }
}

/// `Σ_tokens KL(dense ‖ pruned)` of the next-token distributions of one window's logits, in
/// nats, and the number of tokens.
fn kl_sum(dense: &Activation, pruned: &Activation) -> Result<(f64, usize)> {
    let vocab = dense
        .shape()
        .last()
        .copied()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::internal("logits without a vocabulary dimension"))?;
    let (p, q) = (dense.to_f32()?, pruned.to_f32()?);
    if p.len() != q.len() {
        return Err(Error::internal(format!(
            "--top-up evo: {} pruned logits against {} dense ones",
            q.len(),
            p.len()
        )));
    }
    // Summed in token order: the fitness does not depend on the number of threads.
    let kls: Vec<f64> = p
        .par_chunks(vocab)
        .zip(q.par_chunks(vocab))
        .map(|(p, q)| kl_divergence(p, q))
        .collect();
    Ok((kls.iter().sum(), p.len() / vocab))
}
