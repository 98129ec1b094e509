//! The report's summaries of a finished job: the allocation's parameters, the sparsity per
//! block and overall, and the [`Report`] itself from what every stage produced.

use super::prepare::{Loaded, Prepared};
use super::search;
use super::weights::Pruned;
use super::PruneConfig;
use crate::allocate::TopUp;
use crate::graph::Discovery;
use crate::onnx::SavedModel;
use crate::prune;
use crate::report::{
    BlockSparsity, CalibrationInfo, DeploymentInfo, FileDigest, InputInfo, MatrixSparsity,
    MethodInfo, OutputInfo, Report, RuntimeInfo, SparsityInfo, TaskEvaluation, TextEvaluation,
    TopUpParameters,
};
use std::collections::BTreeMap;

/// What the job measured after writing the model.
pub(super) struct Measured {
    /// What the zeros give a deployment.
    pub deployment: DeploymentInfo,
    /// Digests of the input's files.
    pub input_files: Vec<FileDigest>,
    /// Digests of every file written.
    pub output_files: Vec<FileDigest>,
    /// Perplexity and agreement per evaluation text.
    pub evaluations: Vec<TextEvaluation>,
    /// Zero-shot accuracy per task file.
    pub zero_shot: Vec<TaskEvaluation>,
    /// Each stage's peak resident memory and the job's ([`crate::report::StagePeaks::finish`]).
    pub peaks: (BTreeMap<String, f64>, Option<f64>),
    /// Wall time of each stage.
    pub timings: BTreeMap<String, f64>,
}

/// The report of a finished job.
pub(super) fn report(
    loaded: &Loaded,
    prepared: &Prepared,
    pruned: Pruned,
    saved: &SavedModel,
    measured: Measured,
) -> Report {
    let (config, discovery) = (&loaded.config, &loaded.discovery);
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        tool: env!("CARGO_PKG_NAME").to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        command_line: config.command_line.clone(),
        onnx_runtime: prepared.runtime.as_ref().map(|rt| RuntimeInfo {
            version: rt.version(),
            library: rt.library().to_path_buf(),
            device: rt.device(),
            cuda_fallback: rt.fallback_reason(),
            threads: rt.threads(),
        }),
        input: InputInfo {
            model: config.input.clone(),
            blocks: discovery.n_blocks,
            prunable_linears: discovery.linears.len(),
            prunable_params: discovery.prunable_params(),
            excluded_weights: discovery.excluded.len(),
            files: measured.input_files,
        },
        output: OutputInfo {
            model: saved.model_path.clone(),
            data_file: saved.data_path.clone(),
            external_tensors: saved.external_tensors,
            files: measured.output_files,
        },
        method: MethodInfo {
            prune_method: config.method,
            top_up: config.top_up,
            sparsity: config.sparsity,
            nm: config.nm.map(|(n, m)| format!("{n}:{m}")),
            reconstruct: config.reconstruct,
            seed: config.seed,
            top_up_parameters: top_up_parameters(config),
        },
        calibration: prepared.calibration.as_ref().map(|c| CalibrationInfo {
            activation_sums: pruned.sums_site.map(|s| s.name().to_string()),
            spilled_mib: pruned.spilled_bytes as f64 / (1u64 << 20) as f64,
            ..c.info.clone()
        }),
        search: pruned.search,
        allocation: pruned.allocation,
        sparsity: summarize_sparsity(config.sparsity, discovery, pruned.weights.per_matrix),
        evaluation: measured.evaluations,
        zero_shot: measured.zero_shot,
        deployment: measured.deployment,
        timings_s: measured.timings,
        peak_rss_mib: measured.peaks.1,
        stage_peak_rss_mib: measured.peaks.0,
        memory_budget: config.memory_budget,
    }
}

/// The parameters of the allocation in use, for the report.
fn top_up_parameters(config: &PruneConfig) -> Option<TopUpParameters> {
    match config.top_up {
        TopUp::Uniform => None,
        TopUp::Neuroal => Some(TopUpParameters::Neuroal {
            step: config.neuroal_step,
            fixed_block_lambda: config.neuroal_lambdas.block,
            fixed_row_lambda: config.neuroal_lambdas.row,
            search_windows: search::SEARCH_WINDOWS.min(config.nsamples),
        }),
        TopUp::Owl => Some(TopUpParameters::Owl {
            m: config.owl_m,
            lambda: config.owl_lambda,
        }),
        TopUp::Alpha => Some(TopUpParameters::Alpha {
            epsilon: config.alpha_epsilon,
        }),
        TopUp::Dlp => Some(TopUpParameters::Dlp {
            alpha: config.dlp_alpha,
        }),
        TopUp::Evo => Some(TopUpParameters::Evo {
            start: config.evo_start,
            units: config.evo_units,
            generations: config.evo_generations,
            search_windows: search::SEARCH_WINDOWS.min(config.nsamples),
            step: config.neuroal_step,
        }),
        TopUp::Dsnot => Some(TopUpParameters::Dsnot {
            max_cycles: prune::dsnot::MAX_CYCLES,
            update_threshold: prune::dsnot::THRESHOLD,
        }),
    }
}

/// The target and measured sparsity, per block and overall, from every matrix's.
fn summarize_sparsity(
    target: f64,
    discovery: &Discovery,
    per_matrix: Vec<MatrixSparsity>,
) -> SparsityInfo {
    // Per block: (zeros, target zeros, weights).
    let mut blocks: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
    let mut zeros_total = 0.0;
    for (m, linear) in per_matrix.iter().zip(&discovery.linears) {
        let zeros = m.measured * linear.numel() as f64;
        zeros_total += zeros;
        let entry = blocks.entry(m.block).or_default();
        entry.0 += zeros;
        entry.1 += m.target * linear.numel() as f64;
        entry.2 += linear.numel();
    }
    SparsityInfo {
        target,
        measured: zeros_total / discovery.prunable_params().max(1) as f64,
        per_block: blocks
            .into_iter()
            .map(|(block, (zeros, target, n))| BlockSparsity {
                block,
                target: target / n.max(1) as f64,
                measured: zeros / n.max(1) as f64,
            })
            .collect(),
        per_matrix,
    }
}
