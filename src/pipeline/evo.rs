//! `--top-up evo` (docs/methods.md §5.2): the allocation searched directly against the dense model's
//! next-token distributions. Each unit's masks (a block's, or its attention's and its MLP's) at
//! any level come from one dense pass's statistics, so a candidate costs one forward pass of the
//! whole model on a few calibration windows and no sequential pass (from its first block that
//! differs from its parent's, when the parent's run is kept); the final pass then prunes at the
//! chosen levels with dense outputs fed forward, so that it writes the masks the search scored.

use super::allocation::{blocks, dense_norms, plan_from_levels, AllocationInputs};
use super::search;
use super::sequential::{session, weight_value};
use super::staged::{Checkpoint, StagedRun};
use super::PruneConfig;
use crate::allocate::evo::{search as evolve, EvoSettings, Selection};
use crate::allocate::{EvoStart, EvoUnits, NeuroalStep, SparsityPlan};
use crate::error::{Error, Result};
use crate::eval::kl_divergence;
use crate::graph::{Discovery, Linear, Partition, StageKind};
use crate::onnx::OnnxModel;
use crate::prune::{prune_mask, score_matrix, MaskRule};
use crate::report::{AllocationDetail, EvoEvaluations, EvoUnit, Matrices, SearchReport};
use crate::runtime::{logits_output, Activation, ModelSession, Runtime};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

/// Offspring per generation, all ranked by the first selection step.
const OFFSPRING: usize = 8;
/// The selection steps, as (windows, survivors): 8 offspring on one window, the best 2 on four
/// against the parent (a third step, the best of those on sixteen, did worse on held-out
/// calibration text: docs/methods.md §5.2). Window counts are capped by the calibration windows
/// and by [`DENSE_LOGITS_BYTES`].
const SELECTION: [(usize, usize); 2] = [(1, 2), (4, 1)];
/// Memory the dense model's logits may take; they are held for every window of the last step.
const DENSE_LOGITS_BYTES: usize = 2 << 30;
/// The vocabulary assumed when the embedding was not found: the largest among supported exports
/// (Gemma 3), so that the cap errs on the small side.
const LARGEST_VOCAB: usize = 262_144;
/// Tokens of each window the fitness reads, at most.
const TOKENS: usize = 512;
/// Sparsity one move adds to a block.
const STEP: f64 = 0.02;
/// Most moves per mutation.
const MAX_MOVES: usize = 3;

/// The search's settings for `config` on a model whose logits have `vocab` entries.
fn settings(config: &PruneConfig, vocab: usize) -> EvoSettings {
    let tokens = TOKENS.min(config.seqlen);
    EvoSettings {
        generations: config.evo_generations,
        offspring: OFFSPRING,
        selection: selection(&SELECTION, config.nsamples, tokens, vocab),
        tokens,
        step: STEP,
        max_moves: MAX_MOVES,
        seed: config.seed,
    }
}

/// The `steps` (windows, survivors) with their windows capped by the `nsamples` calibration
/// windows and by [`DENSE_LOGITS_BYTES`] of dense logits (`tokens × vocab` floats per window); a
/// capped step on as many windows as the one before merges into it, with its survivors.
fn selection(
    steps: &[(usize, usize)],
    nsamples: usize,
    tokens: usize,
    vocab: usize,
) -> Vec<Selection> {
    let window_bytes = tokens * vocab * std::mem::size_of::<f32>();
    let most = (DENSE_LOGITS_BYTES / window_bytes.max(1))
        .min(nsamples)
        .max(1);
    let mut selection: Vec<Selection> = Vec::with_capacity(steps.len());
    for &(windows, survivors) in steps {
        let windows = windows.min(most);
        match selection.last_mut() {
            Some(before) if before.windows == windows => before.survivors = survivors,
            _ => selection.push(Selection { windows, survivors }),
        }
    }
    selection
}

/// Linears that the search gives one level.
struct Unit {
    /// Its block and matrices, for the report.
    unit: EvoUnit,
    /// Its linears' indices in discovery order.
    linears: Vec<usize>,
}

/// The search's units in block order, as `kind` asks: each block, or each block's attention
/// matrices then its MLP's (a block with only one of the two is one unit).
fn units(discovery: &Discovery, kind: EvoUnits) -> Vec<Unit> {
    let mut units = Vec::new();
    for (&block, linears) in &blocks(discovery) {
        let (mlp, attention): (Vec<usize>, Vec<usize>) = linears
            .iter()
            .partition(|&&i| discovery.linears[i].is_mlp());
        let groups = match kind {
            EvoUnits::Group if !mlp.is_empty() && !attention.is_empty() => {
                vec![(Matrices::Attention, attention), (Matrices::Mlp, mlp)]
            }
            _ => vec![(Matrices::All, linears.clone())],
        };
        units.extend(groups.into_iter().map(|(matrices, linears)| Unit {
            unit: EvoUnit { block, matrices },
            linears,
        }));
    }
    units
}

/// Every linear's level (discovery order) from its unit's in `levels`.
fn per_linear(discovery: &Discovery, units: &[Unit], levels: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; discovery.linears.len()];
    for (unit, &level) in units.iter().zip(levels) {
        for &i in &unit.linears {
            out[i] = level;
        }
    }
    out
}

/// What the evolutionary search chose and did.
pub(crate) struct Searched {
    /// Every linear at its unit's chosen level (and its rows after NeuroAL's row step).
    pub plan: SparsityPlan,
    /// The search's start, generations and choice, for the report.
    pub detail: AllocationDetail,
    /// NeuroAL's block step, when it was the start, and its row step on the chosen blocks, when
    /// it ran.
    pub neuroal: Option<SearchReport>,
    /// Wall time of the whole search, NeuroAL's steps included, seconds.
    pub seconds: f64,
}

/// Searches per-unit sparsity levels (`config.evo_units`) from the start `config.evo_start`
/// names (NeuroAL's block step, or uniform); with `--neuroal-step both`, NeuroAL's row step then
/// spreads each matrix's level over its rows.
pub(super) fn evo(inputs: &AllocationInputs) -> Result<Searched> {
    let AllocationInputs {
        model,
        discovery,
        runtime,
        windows,
        config,
        progress,
        ..
    } = *inputs;
    let started = Instant::now();
    let units = units(discovery, config.evo_units);
    let (start, neuroal) = match config.evo_start {
        EvoStart::Uniform => (vec![config.sparsity; units.len()], None),
        EvoStart::Neuroal => {
            let block_only = PruneConfig {
                neuroal_step: NeuroalStep::Block,
                ..config.clone()
            };
            let (plan, report) = search::neuroal(&AllocationInputs {
                config: &block_only,
                ..*inputs
            })?;
            let levels = units
                .iter()
                .map(|unit| plan.rules[unit.linears[0]].mean_sparsity(1))
                .collect();
            (levels, Some(report))
        }
    };
    let clock = Instant::now();
    let settings = settings(config, discovery.vocab.unwrap_or(LARGEST_VOCAB));
    let last_windows = settings.selection.last().map_or(1, |s| s.windows);
    let params: Vec<f64> = units
        .iter()
        .map(|unit| {
            unit.linears
                .iter()
                .map(|&i| discovery.linears[i].numel() as f64)
                .sum()
        })
        .collect();
    let steps: Vec<String> = settings
        .selection
        .iter()
        .map(|s| format!("{} window(s)", s.windows))
        .collect();
    let passes: usize = settings
        .selection
        .iter()
        .scan(settings.offspring, |candidates, s| {
            let scored = *candidates * s.windows;
            *candidates = s.survivors;
            Some(scored)
        })
        .sum();
    progress.note(&format!(
        "  evo: {} units ({}), a dense pass over {} windows for the masks, then {} generations of {} offspring selected on {} of {} tokens each: {} window passes through the whole model",
        units.len(),
        config.evo_units.as_str(),
        windows.len(),
        settings.generations,
        settings.offspring,
        steps.join(", then "),
        settings.tokens,
        last_windows + settings.generations * passes
    ));
    let norms = dense_norms(inputs)?;
    let fitness_windows: Vec<Vec<i64>> = windows[..last_windows]
        .iter()
        .map(|w| w[..w.len().min(settings.tokens)].to_vec())
        .collect();
    let forward = RefCell::new(Forward::new(
        model,
        discovery,
        runtime,
        &units,
        fitness_windows,
    )?);
    let variants = RefCell::new(Variants::new(model, discovery, config, &norms, &units));
    let mut dense_logits = Vec::with_capacity(last_windows);
    let dense = variants.borrow_mut().dense()?;
    forward
        .borrow_mut()
        .logits(last_windows, &dense, false, |_, logits| {
            dense_logits.push(logits);
            Ok(())
        })?;
    drop(dense);
    // A candidate's logits are compared window by window as they come, so that only the dense
    // model's are held (at most DENSE_LOGITS_BYTES). Runs on the last step's windows are kept
    // for later candidates to resume from.
    let fitness = |levels: &[f64], n: usize| -> Result<f64> {
        let weights = variants.borrow_mut().weights(levels)?;
        let keep = n == last_windows;
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
        units: units.iter().map(|unit| unit.unit).collect(),
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
    // The candidates' weights, runs and the dense logits are no longer needed.
    drop((forward, variants, dense_logits));
    let levels = per_linear(discovery, &units, &outcome.levels);
    let (plan, neuroal) = if config.neuroal_step == NeuroalStep::Both {
        let (plan, rows) = search::neuroal_rows(inputs, &levels)?;
        let report = match neuroal {
            Some(mut block) => {
                block.row = rows.row;
                block.row_lambda = rows.row_lambda;
                block.seconds += rows.seconds;
                block.timings_s.add(&rows.timings_s);
                block
            }
            None => rows,
        };
        (plan, Some(report))
    } else {
        (plan_from_levels(&levels), neuroal)
    };
    Ok(Searched {
        plan,
        detail,
        neuroal,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The masked weights of every unit at the levels candidates ask for, computed once per unit and
/// level from the dense pass's norms and kept while the parent (or this generation's offspring)
/// uses them.
struct Variants<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    config: &'a PruneConfig,
    norms: &'a [Vec<f32>],
    units: &'a [Unit],
    /// `(unit position, level bits)` → its weights as stage inputs.
    cache: HashMap<(usize, u64), Rc<Vec<Activation>>>,
}

impl<'a> Variants<'a> {
    fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
        config: &'a PruneConfig,
        norms: &'a [Vec<f32>],
        units: &'a [Unit],
    ) -> Self {
        Self {
            model,
            discovery,
            config,
            norms,
            units,
            cache: HashMap::new(),
        }
    }

    /// Every unit's dense weights.
    fn dense(&mut self) -> Result<Vec<Rc<Vec<Activation>>>> {
        self.units
            .iter()
            .map(|unit| {
                let values = unit
                    .linears
                    .iter()
                    .map(|&i| weight_value(self.model, &self.discovery.linears[i], None))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Rc::new(values))
            })
            .collect()
    }

    /// Every unit's weights pruned at its level in `levels`.
    fn weights(&mut self, levels: &[f64]) -> Result<Vec<Rc<Vec<Activation>>>> {
        let mut out = Vec::with_capacity(levels.len());
        for (u, &level) in levels.iter().enumerate() {
            let key = (u, level.to_bits());
            if !self.cache.contains_key(&key) {
                let values = self.units[u]
                    .linears
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
            .retain(|(u, bits), _| levels.get(*u).map(|l| l.to_bits()) == Some(*bits));
    }
}

/// The whole model run stage by stage on (the first of) the fitness windows, with every unit's
/// weights given, for its logits. Runs it is told to keep are saved before every block, so that a
/// later run whose first blocks have the same weights starts where they end: an offspring
/// differs from its parent in a few units only.
struct Forward<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    runtime: &'a Runtime,
    units: &'a [Unit],
    /// Per block in order, the positions of its units (consecutive).
    block_units: Vec<Range<usize>>,
    partition: Partition,
    sessions: HashMap<usize, ModelSession>,
    logits: String,
    windows: Vec<Vec<i64>>,
    saved: Vec<Saved>,
}

/// A kept run: its units' weights, and the run just before each block.
struct Saved {
    units: Vec<Rc<Vec<Activation>>>,
    before: Vec<Checkpoint>,
}

impl<'a> Forward<'a> {
    fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
        runtime: &'a Runtime,
        units: &'a [Unit],
        windows: Vec<Vec<i64>>,
    ) -> Result<Self> {
        let logits = logits_output(model.graph()).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        let mut block_units: Vec<Range<usize>> = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            match block_units.last_mut() {
                Some(range) if units[range.start].unit.block == unit.unit.block => {
                    range.end = u + 1
                }
                _ => block_units.push(u..u + 1),
            }
        }
        Ok(Self {
            model,
            discovery,
            runtime,
            units,
            block_units,
            partition: Partition::new(model, discovery)?,
            sessions: HashMap::new(),
            logits,
            windows,
            saved: Vec::new(),
        })
    }

    /// Runs the first `n` windows with unit `u` on `weights[u]` and hands each window's logits
    /// to `each` (window index, logits) in window order; `keep` saves the run for later ones to
    /// resume from.
    fn logits(
        &mut self,
        n: usize,
        weights: &[Rc<Vec<Activation>>],
        keep: bool,
        mut each: impl FnMut(usize, Activation) -> Result<()>,
    ) -> Result<()> {
        // The kept run sharing the most leading blocks (the same weights, not equal ones).
        let shared = |s: &Saved| {
            self.block_units
                .iter()
                .take_while(|range| {
                    let mut units = (*range).clone();
                    units.all(|u| match (s.units.get(u), weights.get(u)) {
                        (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                        _ => false,
                    })
                })
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
            let mut feeds: Vec<(&str, &Activation)> = Vec::with_capacity(linears.len());
            if !linears.is_empty() {
                if keep {
                    before.push(run.checkpoint());
                }
                let range = self.block_units.get(position).cloned().unwrap_or_default();
                position += 1;
                for u in range {
                    let (unit, values) = (&self.units[u], weights.get(u));
                    let values = values.filter(|v| v.len() == unit.linears.len());
                    let values = values.ok_or_else(|| {
                        Error::internal("--top-up evo: a unit without its weights")
                    })?;
                    feeds.extend(unit.linears.iter().zip(values.iter()).map(|(&i, value)| {
                        (self.discovery.linears[i].weight.name.as_str(), value)
                    }));
                }
                if feeds.len() != linears.len() {
                    return Err(Error::internal(
                        "--top-up evo: a block's units do not hold its linears",
                    ));
                }
            }
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
                units: weights.to_vec(),
                before,
            });
        }
        Ok(())
    }

    /// Drops every kept run but those of `parent`'s weights.
    fn keep_only(&mut self, parent: &[Rc<Vec<Activation>>]) {
        self.saved.retain(|s| {
            s.units.len() == parent.len()
                && s.units.iter().zip(parent).all(|(a, b)| Rc::ptr_eq(a, b))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(selection: &[Selection]) -> Vec<(usize, usize)> {
        selection.iter().map(|s| (s.windows, s.survivors)).collect()
    }

    #[test]
    fn selection_windows_are_capped_by_the_calibration_and_the_dense_logits_memory() {
        let three = [(1, 2), (4, 1), (16, 1)];
        // SmolLM2: 512 × 49,152 floats a window, 21 windows in 2 GiB.
        assert_eq!(
            steps(&selection(&three, 32, 512, 49_152)),
            [(1, 2), (4, 1), (16, 1)]
        );
        // Fewer calibration windows than a step asks for.
        assert_eq!(
            steps(&selection(&three, 10, 512, 49_152)),
            [(1, 2), (4, 1), (10, 1)]
        );
        assert_eq!(steps(&selection(&three, 4, 512, 49_152)), [(1, 2), (4, 1)]);
        assert_eq!(steps(&selection(&three, 1, 512, 49_152)), [(1, 1)]);
        // Gemma 3's 262,144 entries: exactly 4 windows of 512 tokens fit.
        assert_eq!(
            steps(&selection(&three, 32, 512, 262_144)),
            [(1, 2), (4, 1)]
        );
        // A vocabulary that leaves room for one window still searches, on one window.
        assert_eq!(steps(&selection(&three, 32, 512, 1 << 20)), [(1, 1)]);
        assert_eq!(steps(&selection(&SELECTION, 32, 512, 49_152)), SELECTION);
    }
}
