//! `--top-up evo` (docs/methods.md §5.2): the allocation searched directly against the dense model's
//! next-token distributions. Each unit's masks (a block's, or its attention's and its MLP's) at
//! any level come from one dense pass's statistics, so a candidate costs one forward pass of the
//! whole model on a few calibration windows and no sequential pass (from its first block that
//! differs from its parent's, when the parent's run is kept); the final pass then prunes at the
//! chosen levels with dense outputs fed forward, so that it writes the masks the search scored.

use super::allocation::{blocks, dense_norms, plan_from_levels, AllocationInputs};
use super::search::{self, search_jobs, side_by_side, JobRuntimes};
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
use crate::report::{
    AllocationDetail, EvoEvaluations, EvoTimings, EvoUnit, Matrices, SearchReport,
};
use crate::runtime::{logits_output, Activation, ModelSession, Runtime};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
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
        masker,
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
    // A step runs only the windows its candidates were not scored on in the step before.
    let passes: usize = settings
        .selection
        .iter()
        .scan((settings.offspring, 0), |(candidates, scored), s| {
            let new = *candidates * (s.windows - *scored);
            *candidates = s.survivors;
            *scored = s.windows;
            Some(new)
        })
        .sum();
    progress.note(&format!(
        "  evo: {} units ({}), a dense pass over {} windows for the masks, then {} generations of {} offspring selected on {} of {} tokens each: {} window runs through the whole model, the dense model's included",
        units.len(),
        config.evo_units.as_str(),
        windows.len(),
        settings.generations,
        settings.offspring,
        steps.join(", then "),
        settings.tokens,
        2 * last_windows + settings.generations * passes
    ));
    let norms = dense_norms(inputs)?;
    let fitness_windows: Vec<Vec<i64>> = windows[..last_windows]
        .iter()
        .map(|w| w[..w.len().min(settings.tokens)].to_vec())
        .collect();
    let job_runtimes = JobRuntimes::new(inputs, search_jobs(config, masker, discovery))?;
    let jobs: Vec<Job> = job_runtimes
        .runtimes(runtime)
        .into_iter()
        .map(Job::new)
        .collect();
    let (job_count, threads_per_job) = (jobs.len(), jobs[0].runtime.threads());
    let scorer = RefCell::new(Scorer::new(
        Forward::new(model, discovery, &units, fitness_windows)?,
        jobs,
        Variants::new(model, discovery, config, &norms, &units),
        &start,
    )?);
    let total = settings.generations;
    progress.item("evo generations", 0, total);
    let outcome = evolve(
        &start,
        &params,
        &settings,
        |batch, windows| scorer.borrow_mut().score(batch, windows),
        |g, generation, parent| {
            scorer.borrow_mut().keep_only(parent);
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
    // The candidates' weights, runs and the dense logits are no longer needed.
    let scorer = scorer.into_inner();
    let (window_runs, timings_s) = (scorer.window_runs, Box::new(scorer.timings()));
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
        window_runs,
        jobs: job_count,
        threads_per_job,
        seconds: clock.elapsed().as_secs_f64(),
        timings_s,
    };
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

/// Scores candidates on the fitness windows, keeping what later candidates reuse: each
/// candidate's KL divergence per window (a step scores its candidates only on the windows the
/// step before did not), and the runs of the parent and of the step's candidates, for runs that
/// share their first blocks to resume from.
struct Scorer<'a> {
    forward: Forward<'a>,
    jobs: Vec<Job<'a>>,
    variants: Variants<'a>,
    /// The dense model's logits on every fitness window.
    dense_logits: Vec<Activation>,
    /// By candidate (its levels' bits): what has been scored of it.
    scored: BTreeMap<Vec<u64>, Scored>,
    /// The parent's key: its run is always kept.
    parent: Vec<u64>,
    /// Windows run through the model so far, the dense model's included.
    window_runs: usize,
    /// Seconds spent masking the units' weights.
    masks: f64,
}

/// What the search has scored of a candidate.
#[derive(Default)]
struct Scored {
    /// Per window from the first: `Σ_tokens KL(dense ‖ pruned)` and the token count.
    windows: Vec<(f64, usize)>,
    /// Its run on those windows, when kept.
    run: Option<Saved>,
}

/// A candidate's key: its levels' bits.
fn key(levels: &[f64]) -> Vec<u64> {
    levels.iter().map(|l| l.to_bits()).collect()
}

impl<'a> Scorer<'a> {
    /// A scorer whose first parent is `start`; runs the dense model on every fitness window.
    fn new(
        forward: Forward<'a>,
        mut jobs: Vec<Job<'a>>,
        mut variants: Variants<'a>,
        start: &[f64],
    ) -> Result<Self> {
        let dense = variants.dense()?;
        let tasks: Vec<Task> = (0..forward.windows.len())
            .map(|window| Task {
                weights: dense.clone(),
                window,
                from: None,
                keep: false,
            })
            .collect();
        let dense_logits = forward
            .run_all(&mut jobs, &tasks, |_, logits| Ok(logits))?
            .into_iter()
            .map(|(logits, _)| logits)
            .collect();
        Ok(Self {
            forward,
            jobs,
            variants,
            dense_logits,
            scored: BTreeMap::new(),
            parent: key(start),
            window_runs: tasks.len(),
            masks: 0.0,
        })
    }

    /// Where the time went: the jobs' window runs and fitness, and the masks.
    fn timings(&self) -> EvoTimings {
        let mut timings = EvoTimings {
            masks: self.masks,
            ..EvoTimings::default()
        };
        for job in &self.jobs {
            timings.add(&job.timings);
        }
        timings
    }

    /// The fitness of each of `batch` on the first `n` windows: the mean over their tokens of
    /// KL(dense ‖ pruned) of the next-token distributions, nats per token.
    fn score(&mut self, batch: &[Vec<f64>], n: usize) -> Result<Vec<f64>> {
        let keys: Vec<Vec<u64>> = batch.iter().map(|levels| key(levels)).collect();
        // A step scores the candidates the step before passed on: the others' runs and scores
        // are no longer needed (the parent's run stays, for every candidate to resume from).
        self.scored
            .retain(|key, _| *key == self.parent || keys.contains(key));
        let clock = Instant::now();
        let weights = batch
            .iter()
            .map(|levels| self.variants.weights(levels))
            .collect::<Result<Vec<_>>>()?;
        self.masks += clock.elapsed().as_secs_f64();
        // The windows each candidate still needs: those after the ones it was scored on, when
        // its kept run holds them to be extended; else every window.
        let needs: Vec<Range<usize>> = keys
            .iter()
            .enumerate()
            .map(|(c, key)| {
                let have = self.scored.get(key);
                let known = have.map_or(0, |s| s.windows.len());
                let kept = have.and_then(|s| s.run.as_ref()).map_or(0, Saved::windows);
                if known >= n || keys[..c].contains(key) {
                    n..n
                } else if kept == known {
                    known..n
                } else {
                    0..n
                }
            })
            .collect();
        let results = {
            let kept: Vec<&Saved> = self
                .scored
                .values()
                .filter_map(|s| s.run.as_ref())
                .collect();
            let mut tasks = Vec::new();
            for (c, windows) in needs.iter().enumerate() {
                for window in windows.clone() {
                    tasks.push(Task {
                        weights: weights[c].clone(),
                        window,
                        from: self.forward.resume_point(&kept, &weights[c], window),
                        keep: true,
                    });
                }
            }
            self.window_runs += tasks.len();
            let dense = &self.dense_logits;
            self.forward
                .run_all(&mut self.jobs, &tasks, |window, logits| {
                    let dense = dense.get(window).ok_or_else(|| {
                        Error::internal("--top-up evo: a window without dense logits")
                    })?;
                    kl_sum(dense, &logits)
                })?
        };
        let mut results = results.into_iter();
        for (c, windows) in needs.iter().enumerate() {
            if windows.is_empty() {
                continue;
            }
            let entry = self.scored.entry(keys[c].clone()).or_default();
            entry.windows.truncate(windows.start);
            if windows.start == 0 {
                entry.run = None;
            }
            for _ in windows.clone() {
                let (kl, run) = results
                    .next()
                    .ok_or_else(|| Error::internal("--top-up evo: a window was not run"))?;
                let run = run.ok_or_else(|| Error::internal("--top-up evo: a run not kept"))?;
                entry.windows.push(kl);
                match &mut entry.run {
                    Some(kept) => kept.append(run)?,
                    None => entry.run = Some(run),
                }
            }
        }
        let scores: Vec<f64> = keys
            .iter()
            .map(|key| {
                let windows = &self.scored[key].windows[..n];
                let (sum, tokens) = windows
                    .iter()
                    .fold((0.0, 0), |(s, t), &(kl, count)| (s + kl, t + count));
                sum / tokens.max(1) as f64
            })
            .collect();
        Ok(scores)
    }

    /// Takes `parent`, the generation's choice, as the parent, and drops every variant it
    /// does not use (the next step's scoring drops the other candidates).
    fn keep_only(&mut self, parent: &[f64]) {
        self.parent = key(parent);
        self.variants.keep_only(parent);
    }
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
    cache: HashMap<(usize, u64), Arc<Vec<Activation>>>,
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
    fn dense(&mut self) -> Result<Vec<Arc<Vec<Activation>>>> {
        self.units
            .iter()
            .map(|unit| {
                let values = unit
                    .linears
                    .iter()
                    .map(|&i| weight_value(self.model, &self.discovery.linears[i], None))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Arc::new(values))
            })
            .collect()
    }

    /// Every unit's weights pruned at its level in `levels`.
    fn weights(&mut self, levels: &[f64]) -> Result<Vec<Arc<Vec<Activation>>>> {
        let mut out = Vec::with_capacity(levels.len());
        for (u, &level) in levels.iter().enumerate() {
            let key = (u, level.to_bits());
            if !self.cache.contains_key(&key) {
                let values = self.units[u]
                    .linears
                    .iter()
                    .map(|&i| self.pruned(&self.discovery.linears[i], &self.norms[i], level))
                    .collect::<Result<Vec<_>>>()?;
                self.cache.insert(key, Arc::new(values));
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

/// The whole model run stage by stage on one of the fitness windows, with every unit's weights
/// given, for its logits. A run may be kept, saved before every block, so that a later run
/// whose first blocks have the same weights starts where they end: an offspring differs from
/// its parent in a few units only.
struct Forward<'a> {
    model: &'a OnnxModel,
    discovery: &'a Discovery,
    units: &'a [Unit],
    /// Per block in order, the positions of its units (consecutive).
    block_units: Vec<Range<usize>>,
    partition: Partition,
    logits: String,
    windows: Vec<Vec<i64>>,
}

/// A job's runtime, its sessions (one per stage, opened on first use) and where its time went.
struct Job<'r> {
    runtime: &'r Runtime,
    sessions: HashMap<usize, ModelSession>,
    timings: EvoTimings,
}

impl<'r> Job<'r> {
    fn new(runtime: &'r Runtime) -> Self {
        Self {
            runtime,
            sessions: HashMap::new(),
            timings: EvoTimings::default(),
        }
    }
}

/// One window of a candidate to run.
struct Task<'s> {
    /// Every unit's weights.
    weights: Vec<Arc<Vec<Activation>>>,
    /// Its position among the fitness windows.
    window: usize,
    /// A kept run holding the window, and how many of its leading blocks this run shares.
    from: Option<(&'s Saved, usize)>,
    /// Whether to keep the run.
    keep: bool,
}

/// What a task gave: its score, and its run when kept.
type Ran<T> = (T, Option<Saved>);

/// A kept run: its units' weights, and the run just before each block on its windows (the
/// first ones, in order).
struct Saved {
    units: Vec<Arc<Vec<Activation>>>,
    before: Vec<Checkpoint>,
}

impl Saved {
    /// Number of windows it holds.
    fn windows(&self) -> usize {
        self.before.first().map_or(0, Checkpoint::windows)
    }

    /// Takes in `later`, a run of the same weights on the windows after its own.
    fn append(&mut self, later: Saved) -> Result<()> {
        let same = self.units.len() == later.units.len()
            && self
                .units
                .iter()
                .zip(&later.units)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same || self.before.len() != later.before.len() {
            return Err(Error::internal(
                "--top-up evo: joining runs of different weights",
            ));
        }
        for (mine, theirs) in self.before.iter_mut().zip(&later.before) {
            mine.append(theirs)?;
        }
        Ok(())
    }
}

impl<'a> Forward<'a> {
    fn new(
        model: &'a OnnxModel,
        discovery: &'a Discovery,
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
            units,
            block_units,
            partition: Partition::new(model, discovery)?,
            logits,
            windows,
        })
    }

    /// The run of `kept` holding `window` that shares the most leading blocks with `weights`
    /// (the same weights, not equal ones), and how many: `None` when none shares a block.
    fn resume_point<'s>(
        &self,
        kept: &[&'s Saved],
        weights: &[Arc<Vec<Activation>>],
        window: usize,
    ) -> Option<(&'s Saved, usize)> {
        let shared = |s: &Saved| {
            self.block_units
                .iter()
                .take_while(|range| {
                    let mut units = (*range).clone();
                    units.all(|u| match (s.units.get(u), weights.get(u)) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    })
                })
                .count()
                .min(s.before.len().saturating_sub(1))
        };
        kept.iter()
            .filter(|s| s.windows() > window)
            .map(|&s| (s, shared(s)))
            .max_by_key(|&(_, depth)| depth)
            .filter(|&(_, depth)| depth > 0)
    }

    /// Runs `tasks`, as many at a time as there are `jobs`, and hands each one's logits to
    /// `score` (window, logits); the results come in the order of `tasks`, with the runs kept.
    fn run_all<T: Send>(
        &self,
        jobs: &mut [Job],
        tasks: &[Task],
        score: impl Fn(usize, Activation) -> Result<T> + Sync,
    ) -> Result<Vec<Ran<T>>> {
        // The longest runs (from the fewest shared blocks) first, so that the jobs end together.
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        order.sort_by_key(|&t| tasks[t].from.map_or(0, |(_, depth)| depth));
        side_by_side(jobs, &order, "--top-up evo: candidate windows", |job, t| {
            let task = &tasks[t];
            let (logits, run) = self.run(job, task)?;
            let clock = Instant::now();
            let scored = score(task.window, logits)?;
            job.timings.fitness += clock.elapsed().as_secs_f64();
            Ok((scored, run))
        })
    }

    /// Runs `task` on `job`'s sessions: its window's logits, and the run when it is kept.
    fn run(&self, job: &mut Job, task: &Task) -> Result<(Activation, Option<Saved>)> {
        let clock = Instant::now();
        let window = task.window..task.window + 1;
        let (mut run, mut position, mut before) = match task.from {
            Some((saved, depth)) => {
                let before: Vec<Checkpoint> = if task.keep {
                    saved.before[..depth]
                        .iter()
                        .map(|c| c.windows_in(window.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                let from = saved.before[depth].windows_in(window.clone());
                let run = StagedRun::resume(self.model, &self.partition, job.runtime, &from);
                (run, depth, before)
            }
            None => {
                let windows = &self.windows[window.clone()];
                let run = StagedRun::new(self.model, &self.partition, job.runtime, windows)?;
                (run, 0, Vec::new())
            }
        };
        while !run.at_suffix() {
            let linears: Vec<&Linear> = match run.stage().kind {
                StageKind::Block(block) => self.discovery.block(block).collect(),
                _ => Vec::new(),
            };
            let mut feeds: Vec<(&str, &Activation)> = Vec::with_capacity(linears.len());
            if !linears.is_empty() {
                if task.keep {
                    before.push(run.checkpoint());
                }
                let range = self.block_units.get(position).cloned().unwrap_or_default();
                position += 1;
                for u in range {
                    let (unit, values) = (&self.units[u], task.weights.get(u));
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
            let stage = session(&mut job.sessions, &mut run, &linears, &[], &[])?;
            run.advance(stage, &feeds, &[], |_, _| Ok(()))?;
        }
        job.timings.blocks += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let suffix = session(&mut job.sessions, &mut run, &[], &[], &[])?;
        let logits = run
            .run(suffix, 0, &[], std::slice::from_ref(&self.logits))?
            .pop()
            .ok_or_else(|| Error::internal("the suffix gave no logits"))?;
        job.timings.head += clock.elapsed().as_secs_f64();
        let saved = task.keep.then(|| Saved {
            units: task.weights.clone(),
            before,
        });
        Ok((logits, saved))
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
