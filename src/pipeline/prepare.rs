//! The job's first stages: load and discover the model, then everything that can fail on the
//! user's input before the long work starts (tokenizer, evaluation data, ONNX Runtime, the mask
//! kernels), and the calibration windows.

use super::calibration::{is_token_file, Calibration};
use super::config::check_vocabulary;
use super::evaluate::EvalSet;
use super::{inspect, PruneConfig};
use crate::allocate::{self, SparsityPlan};
use crate::calib::TextTokenizer;
use crate::error::{Error, Result};
use crate::graph::Discovery;
use crate::onnx::{Companion, OnnxModel};
use crate::progress::Progress;
use crate::prune::{Masker, PruneMethod};
use crate::runtime::{locate_library, whole_model_bytes, Runtime};
use std::collections::BTreeMap;

/// The loaded model and what was read with it.
pub(super) struct Loaded {
    /// The job, with the window count and length of windows given verbatim.
    pub config: PruneConfig,
    pub model: OnnxModel,
    pub discovery: Discovery,
    /// Files to write beside the output (an onnxruntime-genai folder's).
    pub companions: Vec<Companion>,
    /// Every matrix at the target sparsity: the plan unless an allocation measures another.
    pub uniform: SparsityPlan,
}

/// Loads and discovers the model, refuses an output that is one of its files, reads the
/// companions and the windows given verbatim (returned apart, as the calibration they are).
pub(super) fn load(
    config: &PruneConfig,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<(Loaded, Option<Calibration>)> {
    let stage = progress.stage("load and discover");
    let (model, discovery) = inspect(&config.input)?;
    // The output may be neither the model file nor one of its data files: known once loaded.
    crate::onnx::check_not_an_input(&model, &config.output)?;
    // Read now, so that a malformed runtime config fails the job before any long work.
    let companions = crate::onnx::companions(&config.input, &config.output)?;
    // Windows given verbatim set the job's window count and length.
    let given = match &config.calib_windows {
        Some(path) => Some(Calibration::read_windows(
            path,
            discovery.vocab,
            discovery.max_positions,
        )?),
        None => None,
    };
    let config = match &given {
        Some(c) => PruneConfig {
            nsamples: c.windows.len(),
            seqlen: c.info.seqlen,
            ..config.clone()
        },
        None => config.clone(),
    };
    timings.insert("load".to_string(), stage.finish());
    progress.note(&format!(
        "  {} blocks, {} prunable linears, {:.1} M prunable weights",
        discovery.n_blocks,
        discovery.linears.len(),
        discovery.prunable_params() as f64 / 1e6
    ));
    let uniform = allocate::uniform(&discovery, config.sparsity, config.nm)?;
    // RIA's N:M groups follow a channel permutation, applied by a Gather on the input's last
    // axis: a negative axis needs opset 11.
    if config.method == PruneMethod::Ria && config.nm.is_some() && model.default_opset() < 11 {
        return Err(Error::graph(
            &model.path,
            format!(
                "the model imports ONNX opset {}; RIA with --nm reorders each linear's input with a Gather on axis -1, which needs opset 11 or later (convert the model, or use --prune-method wanda for N:M)",
                model.default_opset()
            ),
        ));
    }
    let loaded = Loaded {
        config,
        model,
        discovery,
        companions,
        uniform,
    };
    Ok((loaded, given))
}

/// What the job runs with once its inputs are checked.
pub(super) struct Prepared {
    /// The held-out texts and tasks, tokenized.
    pub evaluation: Option<EvalSet>,
    /// ONNX Runtime, when the job calibrates or evaluates.
    pub runtime: Option<Runtime>,
    /// Where magnitude and Wanda masks are computed.
    pub masker: Masker,
    /// The calibration windows, when the job needs them.
    pub calibration: Option<Calibration>,
}

/// Checks everything that can fail on the user's input (tokenizer, evaluation data, ONNX
/// Runtime, the mask kernels), then reads or generates the calibration windows.
pub(super) fn prepare(
    loaded: &Loaded,
    given: Option<Calibration>,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<Prepared> {
    let config = &loaded.config;
    let discovery = &loaded.discovery;
    // Windows never run past the model's position tables.
    let capped = |seqlen: usize| match discovery.max_positions {
        Some(max) if max < seqlen => {
            progress.note(&format!(
                "  windows capped at {max} tokens: the model's position tables end there"
            ));
            max
        }
        _ => seqlen,
    };
    let seqlen = capped(config.seqlen);
    let eval_seqlen = config.eval_seqlen.map_or(seqlen, capped);
    let tokenizer = tokenizer(loaded)?;
    let evaluation = match &tokenizer {
        Some(t) => EvalSet::prepare(config, eval_seqlen, t)?,
        None => None,
    };
    let self_written = config.needs_calibration() && config.calib.is_empty() && given.is_none();
    if self_written {
        fits_whole(
            loaded,
            "to write its own calibration text",
            "pass calibration text with --calib or token ids with --calib-windows",
        )?;
    }
    if evaluation.as_ref().is_some_and(EvalSet::has_tasks) {
        fits_whole(
            loaded,
            "to answer the --task-file questions",
            "evaluate on held-out text alone (--tasks lm with --eval-text), which runs one stage at a time",
        )?;
    }
    let runtime = runtime(config, evaluation.is_some(), progress)?;
    let masker = masker(config, progress)?;
    let calibration = match &runtime {
        Some(_) if given.is_some() => given,
        Some(rt) if config.needs_calibration() && config.calib.is_empty() => {
            let stage = progress.stage("generate calibration");
            let c = Calibration::generate(
                config,
                seqlen,
                discovery.max_positions,
                rt,
                &loaded.model,
                tokenizer.as_ref(),
                progress,
            )?;
            timings.insert("generate_calibration".to_string(), stage.finish());
            Some(c)
        }
        Some(_) if config.needs_calibration() => Some(Calibration::prepare(
            config,
            seqlen,
            discovery.vocab,
            tokenizer.as_ref(),
            progress,
        )?),
        _ => None,
    };
    Ok(Prepared {
        evaluation,
        runtime,
        masker,
        calibration,
    })
}

/// Refuses, before any long work, what would open the whole model in ONNX Runtime beyond the
/// job's memory budget (an out-of-memory kill later would leave the user nothing but a signal).
fn fits_whole(loaded: &Loaded, why: &str, instead: &str) -> Result<()> {
    let Some(budget) = loaded.config.memory_budget else {
        return Ok(());
    };
    let needed = whole_model_bytes(&loaded.model);
    if needed <= budget.bytes() {
        return Ok(());
    }
    Err(Error::unsupported(
        &loaded.model.path,
        format!(
            "opening the whole model in ONNX Runtime {why} takes at least {:.1} GiB, more than {}",
            needed as f64 / (1u64 << 30) as f64,
            budget.describe()
        ),
        format!("{instead}, or raise --memory-budget"),
    ))
}

/// The tokenizer: required (and checked against the model) when the job reads text or one is
/// named; else the one beside the model, if any, whose BOS id self-generated calibration uses.
fn tokenizer(loaded: &Loaded) -> Result<Option<TextTokenizer>> {
    let config = &loaded.config;
    let text_needed = config.calib.iter().any(|p| !is_token_file(p))
        || !config.eval_texts.is_empty()
        || !config.task_files.is_empty();
    if text_needed || config.tokenizer.is_some() {
        let t = TextTokenizer::load(&loaded.model.dir, config.tokenizer.as_deref())?;
        check_vocabulary(&t, &loaded.discovery)?;
        Ok(Some(t))
    } else {
        Ok(TextTokenizer::load(&loaded.model.dir, None).ok())
    }
}

/// ONNX Runtime, when the job calibrates or evaluates.
fn runtime(config: &PruneConfig, evaluates: bool, progress: &Progress) -> Result<Option<Runtime>> {
    if !(config.needs_calibration() || evaluates) {
        return Ok(None);
    }
    let library = locate_library(config.ort_lib.as_deref())?;
    Ok(Some(Runtime::new(
        &library,
        config.device,
        config.threads,
        progress,
    )?))
}

/// The masker for the job's method and `--device`, with a note when CUDA was wanted but is not
/// available.
fn masker(config: &PruneConfig, progress: &Progress) -> Result<Masker> {
    let (masker, why) = match config.method {
        PruneMethod::Magnitude | PruneMethod::Wanda => Masker::select(config.device)?,
        _ => (Masker::Cpu, None),
    };
    if let Some(why) = why {
        progress.note(&format!(
            "note: CUDA mask kernels unavailable ({why}); masks on the CPU"
        ));
    }
    Ok(masker)
}
