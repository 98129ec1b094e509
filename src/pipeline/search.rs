//! NeuroAL's search (docs/methods.md §1.3–§1.5): candidate allocations, each pruned sequentially on the
//! first calibration windows from the dense weights and scored by neuron alignment; the block-wise
//! λ first, then the row-wise λ from the best block run's alignment differences.

use super::allocation::{
    blocks, per_linear_levels, plan_from_blocks, plan_from_levels, AllocationInputs,
};
use super::sequential::{Alignment, SequentialPruner};
use super::PruneConfig;
use crate::allocate::neuroal::{
    argmin_first, block_lambdas, block_ramp, misalignment, row_sparsities, ROW_LAMBDAS,
};
use crate::allocate::{NeuroalStep, SparsityPlan};
use crate::device::Device;
use crate::error::Result;
use crate::graph::{Discovery, Partition, StageKind};
use crate::progress::Progress;
use crate::prune::{MaskRule, Masker, PruneMethod};
use crate::report::{Candidate, SearchReport};
use crate::runtime::Runtime;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Windows each candidate is evaluated on (the reference's `nsamples = 8`).
pub const SEARCH_WINDOWS: usize = 8;

/// λ values given instead of searched (`--neuroal-block-lambda`, `--neuroal-row-lambda`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FixedLambdas {
    /// The block step's λ.
    pub block: Option<f64>,
    /// The row step's λ.
    pub row: Option<f64>,
}

/// Searches NeuroAL's allocation for the job's sparsity (its steps, and the λ it fixes) and
/// returns the plan the final pass uses.
///
/// Candidates run [`search_jobs`] at a time, each job with its own stage sessions and a share of
/// the cores; the result depends on how many run at once only through ONNX Runtime's thread
/// count per session (docs/gpu.md, "Reproducing a model").
pub(super) fn neuroal(inputs: &AllocationInputs) -> Result<(SparsityPlan, SearchReport)> {
    with_pruners(inputs, |pruners| {
        steps(
            pruners,
            inputs.discovery,
            inputs.windows,
            inputs.config,
            inputs.progress,
        )
    })
}

/// NeuroAL's row step (§1.5) on matrices at the given levels (`per_linear`, in discovery
/// order) instead of its block step's ramp: `--top-up evo` with `--neuroal-step both`. The
/// report holds the row candidates and the one pass that measured the alignment at those levels.
pub(super) fn neuroal_rows(
    inputs: &AllocationInputs,
    per_linear: &[f64],
) -> Result<(SparsityPlan, SearchReport)> {
    let discovery = inputs.discovery;
    let windows = &inputs.windows[..inputs.windows.len().min(SEARCH_WINDOWS)];
    let plan = plan_from_levels(per_linear);
    with_pruners(inputs, |pruners| {
        let (_, alignment) = evaluate(&mut pruners[0], windows, &plan, &Progress::silent())?;
        let report = SearchReport::new(windows.len());
        row_step(
            pruners,
            discovery,
            windows,
            inputs.config,
            per_linear,
            &alignment,
            report,
            inputs.progress,
        )
    })
}

/// Runs `search` with [`search_jobs`] pruners, each on its own runtime sharing the cores (a
/// single job uses the run's own runtime), and completes its report with the wall time, the jobs
/// and their summed timings.
fn with_pruners(
    inputs: &AllocationInputs,
    search: impl FnOnce(&mut [SequentialPruner]) -> Result<(SparsityPlan, SearchReport)>,
) -> Result<(SparsityPlan, SearchReport)> {
    let AllocationInputs {
        model,
        discovery,
        runtime,
        masker,
        config,
        spill,
        ..
    } = *inputs;
    let clock = Instant::now();
    let jobs = search_jobs(config, masker, discovery);
    let job_runtimes = JobRuntimes::new(inputs, jobs)?;
    let runtimes = job_runtimes.runtimes(runtime);
    let threads_per_job = runtimes[0].threads();
    let mut pruners = runtimes
        .into_iter()
        .map(|rt| {
            Ok(
                SequentialPruner::new(model, discovery, rt, config.method, false)?
                    .with_masker(masker)
                    .spill_beyond(spill.map(|s| s.shared_by(jobs)))
                    .reuse_sessions(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (plan, mut report) = search(&mut pruners)?;
    report.seconds = clock.elapsed().as_secs_f64();
    report.jobs = pruners.len();
    report.threads_per_job = threads_per_job;
    for pruner in &pruners {
        report.timings_s.add(&pruner.timings);
    }
    Ok((plan, report))
}

/// The runtimes of jobs that run side by side, sharing the cores (`--threads`, else every core).
pub(super) struct JobRuntimes {
    /// One per job; none for a single job, which runs on the job's own runtime.
    own: Vec<Runtime>,
}

impl JobRuntimes {
    /// Runtimes for `jobs` jobs.
    pub fn new(inputs: &AllocationInputs, jobs: usize) -> Result<Self> {
        let AllocationInputs {
            runtime,
            config,
            progress,
            ..
        } = *inputs;
        if jobs <= 1 {
            return Ok(Self { own: Vec::new() });
        }
        let cores = match config.threads {
            0 => available_cores(),
            n => n,
        };
        let threads = (cores / jobs).max(1);
        let own = (0..jobs)
            .map(|_| Runtime::new(runtime.library(), config.device, threads, progress))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { own })
    }

    /// One runtime per job: `main` (the job's own) for a single job.
    pub fn runtimes<'r>(&'r self, main: &'r Runtime) -> Vec<&'r Runtime> {
        if self.own.is_empty() {
            vec![main]
        } else {
            self.own.iter().collect()
        }
    }
}

/// At most this many candidates run at a time unless `--search-jobs` says otherwise.
const MAX_AUTO_JOBS: usize = 4;

/// How many search candidates run at a time (NeuroAL's, or the evolutionary search's candidate
/// windows): `--search-jobs`, or one per core up to [`MAX_AUTO_JOBS`] while half of the memory
/// budget (`--memory-budget`, else the available memory) holds them all ([`job_memory`]). On 2
/// cores, two jobs of one ONNX Runtime thread each finish NeuroAL's search 25% sooner than one
/// job of two threads (docs/results.md, "Speed and memory"). The CUDA path runs one at a time:
/// its masks and sessions share one device.
pub(super) fn search_jobs(config: &PruneConfig, masker: &Masker, discovery: &Discovery) -> usize {
    if config.search_jobs > 0 {
        return config.search_jobs;
    }
    if !matches!(masker, Masker::Cpu) || config.device == Device::Cuda {
        return 1;
    }
    let by_memory = config
        .memory_budget
        .map_or(1, |b| b.bytes() / 2 / job_memory(discovery));
    available_cores()
        .min(MAX_AUTO_JOBS)
        .min(by_memory as usize)
        .max(1)
}

/// What one more search job is taken to cost in memory: 2 GiB (a second job on SmolLM2-135M
/// raised the peak by 0.55 GB, and by 1.7 GB while ONNX Runtime kept its CPU arena: its
/// sessions, one per block, and its 8 windows' hidden states) plus
/// four fp32 copies of the largest block's weights (the block's weights as session inputs, the
/// matrix being pruned, its scores).
fn job_memory(discovery: &Discovery) -> u64 {
    let mut per_block: BTreeMap<usize, u64> = BTreeMap::new();
    for l in &discovery.linears {
        *per_block.entry(l.block).or_default() += l.numel() as u64 * 4;
    }
    (2 << 30) + 4 * per_block.values().max().copied().unwrap_or(0)
}

/// The cores this process may use.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The block step, then the row step, as the job asks.
fn steps(
    pruners: &mut [SequentialPruner],
    discovery: &Discovery,
    windows: &[Vec<i64>],
    config: &PruneConfig,
    progress: &Progress,
) -> Result<(SparsityPlan, SearchReport)> {
    let (sparsity, step, fixed, method) = (
        config.sparsity,
        config.neuroal_step,
        config.neuroal_lambdas,
        config.method,
    );
    let windows = &windows[..windows.len().min(SEARCH_WINDOWS)];
    let n_blocks = blocks(discovery).len();
    let block_plan = |lambda: f64| -> (Vec<f64>, SparsityPlan) {
        let ramp = block_ramp(sparsity, lambda, n_blocks);
        (
            per_linear_levels(discovery, &ramp),
            plan_from_blocks(discovery, &ramp),
        )
    };

    // Block step: the λ ramp over blocks; with the row step alone, one uniform run at λ = 0.
    let mut report = SearchReport::new(windows.len());
    let row_wanted = matches!(step, NeuroalStep::Row | NeuroalStep::Both);
    let row_runs = row_wanted && method != PruneMethod::Sparsegpt;
    let (block_sparsity, block_rules, alignment) = if step == NeuroalStep::Row {
        let (per_linear, plan) = block_plan(0.0);
        let (_, alignment) = evaluate(&mut pruners[0], windows, &plan, &Progress::silent())?;
        (per_linear, plan, alignment)
    } else if let Some(lambda) = fixed.block {
        // Given, not searched: one run for the row step's alignment differences, if it runs.
        let (per_linear, plan) = block_plan(lambda);
        let alignment = if row_runs {
            let (score, alignment) =
                evaluate(&mut pruners[0], windows, &plan, &Progress::silent())?;
            report.block.push(Candidate { lambda, score });
            alignment
        } else {
            Vec::new()
        };
        report.block_lambda = Some(lambda);
        (per_linear, plan, alignment)
    } else {
        let lambdas = block_lambdas(sparsity);
        let (per_linear, plans): (Vec<_>, Vec<_>) = lambdas.iter().map(|&l| block_plan(l)).unzip();
        let scored = evaluate_all(pruners, windows, &plans, "block candidates", progress)?;
        let mut runs = Vec::with_capacity(lambdas.len());
        for (((lambda, per_linear), plan), (score, alignment)) in
            lambdas.into_iter().zip(per_linear).zip(plans).zip(scored)
        {
            progress.note(&format!("  block λ {lambda:.2}: misalignment {score:.6e}"));
            report.block.push(Candidate { lambda, score });
            runs.push((per_linear, plan, alignment));
        }
        let best = chosen(&report.block);
        report.block_lambda = Some(report.block[best].lambda);
        runs.swap_remove(best)
    };

    if !row_wanted {
        return Ok((block_rules, report));
    }
    if method == PruneMethod::Sparsegpt {
        report.row_skipped =
            Some("SparseGPT takes one sparsity per matrix (as in the reference)".into());
        return Ok((block_rules, report));
    }

    row_step(
        pruners,
        discovery,
        windows,
        config,
        &block_sparsity,
        &alignment,
        report,
        progress,
    )
}

/// The row step (§1.5) on blocks pruned at `block_sparsity` (per linear), whose run measured
/// `alignment`: each producer's rows follow its consumer's alignment difference, with the row λ
/// given or searched; the row candidates go into `report`.
#[allow(clippy::too_many_arguments)]
fn row_step(
    pruners: &mut [SequentialPruner],
    discovery: &Discovery,
    windows: &[Vec<i64>],
    config: &PruneConfig,
    block_sparsity: &[f64],
    alignment: &[Alignment],
    mut report: SearchReport,
    progress: &Progress,
) -> Result<(SparsityPlan, SearchReport)> {
    let signals = row_signals(pruners[0].partition(), discovery, alignment);
    let row_plan = |lambda: f64| SparsityPlan {
        rules: discovery
            .linears
            .iter()
            .zip(block_sparsity)
            .zip(&signals)
            .map(|((l, &s), g)| {
                let rows = g
                    .as_deref()
                    .and_then(|g| row_sparsities(s, lambda, g))
                    .unwrap_or_else(|| vec![s; l.out_features]);
                MaskRule::Neuron(rows)
            })
            .collect(),
    };
    if let Some(lambda) = config.neuroal_lambdas.row {
        report.row_lambda = Some(lambda);
        return Ok((row_plan(lambda), report));
    }
    let mut plans: Vec<SparsityPlan> = ROW_LAMBDAS.iter().map(|&l| row_plan(l)).collect();
    let scored = evaluate_all(pruners, windows, &plans, "row candidates", progress)?;
    for (&lambda, (score, _)) in ROW_LAMBDAS.iter().zip(scored) {
        progress.note(&format!("  row λ {lambda:.2}: misalignment {score:.6e}"));
        report.row.push(Candidate { lambda, score });
    }
    let best = chosen(&report.row);
    report.row_lambda = Some(report.row[best].lambda);
    Ok((plans.swap_remove(best), report))
}

/// The index of the best candidate: the lowest score, the first on ties (docs/methods.md §1.4).
fn chosen(candidates: &[Candidate]) -> usize {
    let scores: Vec<f64> = candidates.iter().map(|c| c.score).collect();
    argmin_first(&scores).unwrap_or(0)
}

/// A candidate's score and the alignment it was computed from.
type Scored = (f64, Vec<Alignment>);

/// Prunes and scores every plan, as many at a time as there are `pruners`; the results come in
/// the order of `plans` and do not depend on the number of pruners.
fn evaluate_all(
    pruners: &mut [SequentialPruner],
    windows: &[Vec<i64>],
    plans: &[SparsityPlan],
    label: &str,
    progress: &Progress,
) -> Result<Vec<Scored>> {
    let total = plans.len();
    let jobs = pruners.len().clamp(1, total.max(1));
    let done = AtomicUsize::new(0);
    progress.note(&format!(
        "  {label}: {total} pruned passes over {} windows × {} tokens, {jobs} at a time",
        windows.len(),
        windows.first().map_or(0, Vec::len)
    ));
    progress.item(label, 0, total);
    let mut workers: Vec<(&mut SequentialPruner, Progress)> = pruners
        .iter_mut()
        .enumerate()
        .map(|(job, pruner)| (pruner, progress.job(label, job)))
        .collect();
    let order: Vec<usize> = (0..total).collect();
    side_by_side(&mut workers, &order, label, |(pruner, job_progress), i| {
        let scored = evaluate(pruner, windows, &plans[i], job_progress);
        progress.item(label, done.fetch_add(1, Ordering::Relaxed) + 1, total);
        scored
    })
}

/// Runs `run(worker, item)` on every item of `order` (a permutation of `0..order.len()`), as
/// many at a time as there are `workers`, each taking the next item in `order` until none is
/// left or one has failed; the results come in item order, so that they do not depend on which
/// worker ran what. `what` names the items in the error for one skipped without a failure.
pub(super) fn side_by_side<W: Send, T: Send>(
    workers: &mut [W],
    order: &[usize],
    what: &str,
    run: impl Fn(&mut W, usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let total = order.len();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut results: Vec<Option<Result<T>>> = std::iter::repeat_with(|| None).take(total).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .take(total)
            .map(|worker| {
                let (next, failed, run) = (&next, &failed, &run);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let result = run(worker, i);
                        failed.fetch_or(result.is_err(), Ordering::Relaxed);
                        mine.push((i, result));
                    }
                    mine
                })
            })
            .collect();
        for handle in handles {
            // A panicking item is a bug: let it surface as one.
            for (i, result) in handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
            {
                results[i] = Some(result);
            }
        }
    });
    // After a failure the workers skip what is left: report the failure, not the gaps.
    let mut out = Vec::with_capacity(total);
    let mut gap = false;
    for result in results {
        match result {
            Some(r) => out.push(r?),
            None => gap = true,
        }
    }
    if gap {
        return Err(crate::error::Error::internal(format!(
            "{what}: an item was skipped without a failure"
        )));
    }
    Ok(out)
}

/// Prunes a candidate on `windows` and scores it: Σ of every linear's misalignment.
fn evaluate(
    pruner: &mut SequentialPruner,
    windows: &[Vec<i64>],
    plan: &SparsityPlan,
    progress: &Progress,
) -> Result<Scored> {
    let pass = pruner.run(windows, plan, None, true, progress)?;
    let score = pass
        .alignment
        .iter()
        .map(|a| misalignment(&a.dense, &a.sparse))
        .sum();
    Ok((score, pass.alignment))
}

/// The row signal `g` of every linear (docs/methods.md §1.5(a)): the difference `a^dense − a^sparse` of the
/// first linear its output feeds in the same block, when that consumer's input is as wide as the
/// producer's output and the consumer's producers are all that wide (q, k and v of a GQA model
/// stay uniform); `None` (uniform rows) otherwise and in the last block.
fn row_signals(
    partition: &Partition,
    discovery: &Discovery,
    alignment: &[Alignment],
) -> Vec<Option<Vec<f32>>> {
    let mut signals: Vec<Option<Vec<f32>>> = vec![None; discovery.linears.len()];
    let last_block = discovery.linears.iter().map(|l| l.block).max();
    let mut offset = 0;
    for stage in partition.blocks() {
        let StageKind::Block(block) = stage.kind else {
            continue;
        };
        let linears: Vec<_> = discovery.block(block).collect();
        if Some(block) != last_block {
            let producers = partition.producers(stage, &linears);
            for (consumer, sources) in producers.iter().enumerate() {
                let width = linears[consumer].in_features;
                if sources.iter().any(|&p| linears[p].out_features != width) {
                    continue; // GQA q/k/v, fused projections: uniform rows
                }
                let a = &alignment[offset + consumer];
                let g: Vec<f32> = a.dense.iter().zip(&a.sparse).map(|(d, s)| d - s).collect();
                for &p in sources {
                    if signals[offset + p].is_none() {
                        signals[offset + p] = Some(g.clone());
                    }
                }
            }
        }
        offset += linears.len();
    }
    signals
}
