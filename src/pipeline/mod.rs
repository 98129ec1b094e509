//! The whole job, stage by stage: validate ([`config`]), load and prepare ([`prepare`]), prune
//! ([`weights`]), write ([`outputs`]), evaluate, report ([`summary`]). The CLI builds a
//! [`PruneConfig`] and calls [`prune`]; nothing here parses arguments.

mod allocation;
mod calibration;
mod carry;
mod config;
mod evaluate;
mod evo;
mod outputs;
mod prepare;
mod search;
mod sequential;
mod staged;
mod summary;
mod weights;

pub use calibration::{GENERATED_SEQLEN, GENERATED_WINDOWS, TEXT_SEQLEN, TEXT_WINDOWS};
pub use config::{PruneConfig, MIN_CALIBRATION_TOKENS};
pub use search::FixedLambdas;
pub use sequential::{Alignment, SumsSite};
pub use staged::{Checkpoint, StagedRun};

use crate::atomic::Job;
use crate::error::Result;
use crate::graph::{discover, Discovery};
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::report::{
    deployment_info, html_report_path, report_path, Report, StagePeaks, TaskEvaluation,
    TextEvaluation,
};
use prepare::{Loaded, Prepared};
use std::collections::BTreeMap;
use std::path::Path;
use summary::Measured;

/// Loads and checks a model and lists its prunable linears (`neuroal-onnx inspect`).
pub fn inspect(path: &Path) -> Result<(OnnxModel, Discovery)> {
    let model = OnnxModel::load(path)?;
    let discovery = discover(&model)?;
    Ok((model, discovery))
}

/// Runs a pruning job and writes the pruned model and its report.
pub fn prune(config: &PruneConfig, progress: &Progress) -> Result<Report> {
    config.validate()?;
    config::preflight(config)?;
    let mut timings = BTreeMap::new();
    let mut peaks = StagePeaks::start();
    let (loaded, given) = prepare::load(config, progress, &mut timings)?;
    let prepared = prepare::prepare(&loaded, given, progress, &mut timings)?;
    peaks.end("prepare");

    // Every file the job commits is removed again if it fails or is interrupted before the end.
    let job = Job::start();
    let stage = progress.stage("prune");
    let (pruned, output) = weights::prune(&loaded, &prepared, &job, progress, &mut timings)?;
    timings.insert("prune".to_string(), stage.finish());
    peaks.end("prune");
    let companions = &loaded.companions;
    let saved = outputs::write_model(output, companions, &job, progress, &mut timings)?;
    peaks.end("write");

    let stage = progress.stage("measure the files");
    let reordered = pruned.weights.reordered();
    let deployment = deployment_info(&pruned.weights.compressed, loaded.config.nm, reordered);
    let (input_files, output_files) = outputs::digests(&loaded.model, &saved, companions)?;
    timings.insert("measure_files".to_string(), stage.finish());
    peaks.end("measure_files");

    let (evaluations, zero_shot) = evaluate(&loaded, &prepared, progress, &mut timings)?;
    if !(evaluations.is_empty() && zero_shot.is_empty()) {
        peaks.end("evaluate");
    }
    let measured = Measured {
        deployment,
        input_files,
        output_files,
        evaluations,
        zero_shot,
        timings,
        peaks: peaks.finish(),
    };
    let report = summary::report(&loaded, &prepared, pruned, &saved, measured);
    report.write_json(&report_path(&config.output), &job)?;
    report.write_html(&html_report_path(&config.output), &job)?;
    job.keep();
    Ok(report)
}

/// Evaluates the dense and the pruned model on the held-out texts and tasks, if any.
fn evaluate(
    loaded: &Loaded,
    prepared: &Prepared,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<(Vec<TextEvaluation>, Vec<TaskEvaluation>)> {
    let (Some(eval), Some(rt)) = (&prepared.evaluation, &prepared.runtime) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let stage = progress.stage("evaluate dense and pruned");
    let pruned_model = OnnxModel::load(&loaded.config.output)?;
    let compared = eval.compare(rt, &loaded.model, &pruned_model, progress)?;
    timings.insert("evaluate".to_string(), stage.finish());
    Ok(compared)
}
