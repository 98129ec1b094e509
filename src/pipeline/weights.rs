//! The prune stage: the allocation decides each matrix's sparsity (AlphaPruning from the weights,
//! OWL and NeuroAL from calibration runs), then one pass prunes every matrix and hands it to the
//! output as soon as it is pruned: sequentially on calibration windows, or matrix by matrix for
//! the methods that need no data.

use super::allocation::{self, AllocationInputs};
use super::carry::SpillPolicy;
use super::evo;
use super::outputs::PrunedWeights;
use super::prepare::{Loaded, Prepared};
use super::search;
use super::sequential::{SequentialPruner, SumsSite};
use crate::allocate::{SparsityPlan, TopUp};
use crate::atomic::Job;
use crate::error::Result;
use crate::graph::Discovery;
use crate::onnx::{ModelWriter, OnnxModel, SaveOptions};
use crate::progress::Progress;
use crate::prune::{self, Masker, PruneMethod};
use crate::report::{AllocationDetail, SearchReport};
use crate::runtime::Runtime;
use std::collections::BTreeMap;

/// What the prune stage produced, besides the output it wrote to.
pub(super) struct Pruned {
    /// Every matrix's sparsity and compressed sizes.
    pub weights: PrunedWeights,
    /// Where the final pass summed the activations, when it ran on calibration windows.
    pub sums_site: Option<SumsSite>,
    /// NeuroAL's search, when it ran.
    pub search: Option<SearchReport>,
    /// What OWL or AlphaPruning measured.
    pub allocation: Option<AllocationDetail>,
    /// The most bytes of hidden states any pass wrote to disk (beyond its share of the memory
    /// budget).
    pub spilled_bytes: u64,
}

/// Decides the plan and prunes every matrix into a new output owned by `job`, returned with
/// every pruned matrix handed over but not yet finished.
pub(super) fn prune<'m>(
    loaded: &'m Loaded,
    prepared: &Prepared,
    job: &'m Job,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<(Pruned, ModelWriter<'m>)> {
    let config = &loaded.config;
    let (model, discovery) = (&loaded.model, &loaded.discovery);
    let mut plan = loaded.uniform.clone();
    let mut alpha = None;
    if config.top_up == TopUp::Alpha {
        let (chosen, detail) = allocation::alpha(model, discovery, config)?;
        plan = chosen;
        alpha = Some(detail);
    }
    // Pruned matrices go to the output's data file as they are pruned: one at a time in memory.
    let mut output =
        ModelWriter::create(model, &config.output, &SaveOptions::default())?.owned_by(job);
    let mut pruned = match (&prepared.calibration, &prepared.runtime) {
        (Some(calib), Some(rt)) => calibrated(
            loaded,
            prepared,
            (&calib.windows, rt),
            plan,
            &mut output,
            progress,
            timings,
        )?,
        _ => Pruned {
            weights: prune_without_data(
                config.method,
                model,
                discovery,
                &plan,
                &prepared.masker,
                &mut output,
                progress,
            )?,
            sums_site: None,
            search: None,
            allocation: None,
            spilled_bytes: 0,
        },
    };
    pruned.allocation = pruned.allocation.or(alpha);
    timings.insert("prune_write".to_string(), pruned.weights.write_seconds);
    Ok((pruned, output))
}

/// Prunes block by block on the calibration `windows` with `rt`: OWL or NeuroAL first measure
/// the plan (the other allocations keep `plan`), then the final pass prunes every matrix into
/// `output`.
fn calibrated(
    loaded: &Loaded,
    prepared: &Prepared,
    (windows, rt): (&[Vec<i64>], &Runtime),
    mut plan: SparsityPlan,
    output: &mut ModelWriter<'_>,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<Pruned> {
    let config = &loaded.config;
    let (model, discovery) = (&loaded.model, &loaded.discovery);
    let dsnot = config.top_up == TopUp::Dsnot;
    let spill = SpillPolicy::for_job(config);
    // Evo scored masks from the dense model's hidden states; the final pass writes those, unless
    // the kept weights are re-fitted: the re-fit follows the pruned stream (docs/methods.md §5.2).
    let mut pruner = SequentialPruner::new(model, discovery, rt, config.method, dsnot)?
        .with_masker(&prepared.masker)
        .reconstruct(config.reconstruct)
        .feed_dense(config.top_up == TopUp::Evo && !config.reconstruct)
        .spill_beyond(spill.clone());
    let (mut allocation, mut search) = (None, None);
    let inputs = AllocationInputs {
        model,
        discovery,
        runtime: rt,
        masker: &prepared.masker,
        windows,
        config,
        spill: spill.as_ref(),
        progress,
    };
    // The measured allocations decide the plan before the final pass.
    match config.top_up {
        TopUp::Owl | TopUp::Dlp => {
            let measure = match config.top_up {
                TopUp::Owl => allocation::owl,
                _ => allocation::dlp,
            };
            let (chosen, detail) = measure(&inputs)?;
            plan = chosen;
            allocation = Some(detail);
        }
        TopUp::Neuroal => {
            let (chosen, report) = search::neuroal(&inputs)?;
            timings.insert("search".to_string(), report.seconds);
            plan = chosen;
            search = Some(report);
        }
        TopUp::Evo => {
            let searched = evo::evo(&inputs)?;
            timings.insert("search".to_string(), searched.seconds);
            plan = searched.plan;
            allocation = Some(searched.detail);
            search = searched.neuroal;
        }
        TopUp::Uniform | TopUp::Alpha | TopUp::Dsnot => {}
    }
    let weights = final_pass(&mut pruner, windows, &plan, output, discovery, progress)?;
    timings.insert("prune_forward".to_string(), pruner.timings.forward);
    timings.insert("prune_statistics".to_string(), pruner.timings.statistics);
    timings.insert("prune_masks".to_string(), pruner.timings.masks);
    Ok(Pruned {
        weights,
        sums_site: pruner.sums_site(),
        search,
        allocation,
        spilled_bytes: spill.map_or(0, |s| s.spilled_peak()),
    })
}

/// The final sequential pass on every calibration window, writing each pruned matrix. The
/// search ran on pruners of its own: the pruner's timings are this pass's.
fn final_pass(
    pruner: &mut SequentialPruner<'_>,
    windows: &[Vec<i64>],
    plan: &SparsityPlan,
    output: &mut ModelWriter<'_>,
    discovery: &Discovery,
    progress: &Progress,
) -> Result<PrunedWeights> {
    progress.note(&format!(
        "  final pass: {} windows × {} tokens through {} blocks, dense and pruned",
        windows.len(),
        windows.first().map_or(0, Vec::len),
        discovery.n_blocks
    ));
    let pass = pruner.run(windows, plan, Some(output), false, progress)?;
    Ok(pass.pruned)
}

/// Prunes every linear with a method that needs no data (magnitude, dense), each matrix going to
/// `output` as soon as it is pruned.
fn prune_without_data(
    method: PruneMethod,
    model: &OnnxModel,
    discovery: &Discovery,
    plan: &SparsityPlan,
    masker: &Masker,
    output: &mut ModelWriter<'_>,
    progress: &Progress,
) -> Result<PrunedWeights> {
    let mut pruned = PrunedWeights::default();
    let total = discovery.linears.len();
    for (i, (linear, rule)) in discovery.linears.iter().zip(&plan.rules).enumerate() {
        progress.item("matrices", i, total);
        let mut weights = linear.read_out_in(model)?;
        if method == PruneMethod::Dense {
            pruned.record(linear, &weights, 0.0);
            pruned.write(model, linear, None, output)?;
        } else {
            let order = prune::prune_matrix(
                method,
                &linear.weight.name,
                &mut weights,
                linear.out_features,
                linear.in_features,
                None,
                rule,
                false,
                masker,
            )?;
            pruned.record(linear, &weights, rule.mean_sparsity(linear.out_features));
            let bytes = linear.encode_out_in(&weights);
            pruned.write_pruned(model, linear, (&weights, &bytes), order.as_deref(), output)?;
        }
    }
    progress.item("matrices", total, total);
    Ok(pruned)
}
