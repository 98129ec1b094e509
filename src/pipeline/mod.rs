//! The whole job, stage by stage: validate, load, discover, allocate, prune, write, evaluate,
//! report. The CLI builds a [`PruneConfig`] and calls [`prune`]; nothing here parses arguments.

mod allocation;
mod calibration;
mod evaluate;
mod search;
mod sequential;
mod staged;

pub use allocation::AllocationDetail;
pub use search::{Candidate, FixedLambdas, SearchReport};
pub use sequential::{Alignment, SequentialTimings, SumsSite};

use calibration::{is_token_file, Calibration};
pub use calibration::{GENERATED_SEQLEN, GENERATED_WINDOWS, TEXT_SEQLEN, TEXT_WINDOWS};
use evaluate::EvalSet;
use sequential::SequentialPruner;
pub use staged::StagedRun;

use crate::allocate::{self, NeuroalStep, SparsityPlan, TopUp};
use crate::atomic::AtomicFile;
use crate::calib::{Sampling, TextTokenizer};
use crate::error::{Error, Result};
use crate::graph::Linear;
use crate::graph::{discover, Discovery};
use crate::onnx::{ModelWriter, OnnxModel, SaveOptions, SavedModel};
use crate::progress::Progress;
use crate::prune::{self, PruneMethod};
use crate::report::{
    deployment_info, file_digests, html_report_path, report_path, BlockSparsity, CalibrationInfo,
    CompressedSizes, InputInfo, MatrixSparsity, MethodInfo, OutputInfo, Report, RuntimeInfo,
    SparsityInfo, TopUpParameters,
};
use crate::runtime::{locate_library, Device, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A validated pruning job.
#[derive(Clone, Debug)]
pub struct PruneConfig {
    /// The model to prune (never modified).
    pub input: PathBuf,
    /// Where the pruned model goes (its data file is `OUTPUT.data`).
    pub output: PathBuf,
    /// Target fraction of prunable weights set to zero, in `[0, 1)`.
    pub sparsity: f64,
    /// Base score.
    pub method: PruneMethod,
    /// Allocation.
    pub top_up: TopUp,
    /// NeuroAL steps.
    pub neuroal_step: NeuroalStep,
    /// NeuroAL λ given instead of searched.
    pub neuroal_lambdas: FixedLambdas,
    /// Calibration windows.
    pub nsamples: usize,
    /// Tokens per calibration and evaluation window.
    pub seqlen: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// How the model samples its own calibration text (used when no calibration data is given).
    pub sampling: Sampling,
    /// Calibration documents: text files, or `.json` files of token ids.
    pub calib: Vec<PathBuf>,
    /// Calibration windows used exactly as given (a JSON array of token-id arrays); `nsamples`
    /// and `seqlen` are taken from it.
    pub calib_windows: Option<PathBuf>,
    /// `tokenizer.json` (default: next to the model).
    pub tokenizer: Option<PathBuf>,
    /// Held-out texts to measure perplexity on.
    pub eval_texts: Vec<PathBuf>,
    /// At most this many evaluation windows per text.
    pub eval_windows: Option<usize>,
    /// Tokens per evaluation window (default: `seqlen`).
    pub eval_seqlen: Option<usize>,
    /// Zero-shot multiple-choice task files (JSON lines).
    pub task_files: Vec<PathBuf>,
    /// Where ONNX Runtime runs.
    pub device: Device,
    /// `libonnxruntime` to load.
    pub ort_lib: Option<PathBuf>,
    /// N:M structured sparsity.
    pub nm: Option<(usize, usize)>,
    /// OWL's outlier threshold M (`--owl-m`).
    pub owl_m: f64,
    /// OWL's sparsity spread λ (`--owl-lambda`).
    pub owl_lambda: f64,
    /// AlphaPruning's spread ε (`--alpha-epsilon`).
    pub alpha_epsilon: f64,
    /// ONNX Runtime intra-op threads (0: its default).
    pub threads: usize,
    /// NeuroAL candidates evaluated at a time (0: one per core, at most 4, while memory allows).
    pub search_jobs: usize,
    /// The command line, for the report.
    pub command_line: Vec<String>,
}

/// Calibration text shorter than this many tokens is refused: no sensible window fits.
pub const MIN_CALIBRATION_TOKENS: usize = 64;

impl PruneConfig {
    /// Checks ranges and refuses what this version does not do yet, before any work starts.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(Error::invalid(
                "--sparsity",
                format!(
                    "{} is outside [0, 1); give the fraction of weights to zero, e.g. 0.7",
                    self.sparsity
                ),
            ));
        }
        if self.seqlen < 2 {
            return Err(Error::invalid("--seqlen", "must be at least 2 tokens"));
        }
        if !(self.sampling.temperature > 0.0 && self.sampling.temperature.is_finite()) {
            return Err(Error::invalid(
                "--calib-temperature",
                format!("{} must be a positive number", self.sampling.temperature),
            ));
        }
        if !(self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0) {
            return Err(Error::invalid(
                "--calib-top-p",
                format!("{} is outside (0, 1]", self.sampling.top_p),
            ));
        }
        if self.eval_seqlen.is_some_and(|n| n < 2) {
            return Err(Error::invalid("--eval-seqlen", "must be at least 2 tokens"));
        }
        if let Some((n, m)) = self.nm {
            let implied = n as f64 / m as f64;
            if (self.sparsity - implied).abs() > 1e-9 {
                return Err(Error::invalid(
                    "--sparsity",
                    format!(
                        "--nm {n}:{m} prunes {implied} of the weights; pass --sparsity {implied}"
                    ),
                ));
            }
        }
        if self.nsamples == 0 {
            return Err(Error::invalid("--nsamples", "must be at least 1"));
        }
        if self.top_up == TopUp::Dsnot && self.method == PruneMethod::Sparsegpt {
            return Err(Error::invalid(
                "--top-up",
                "dsnot refines a score-based mask; SparseGPT rebuilds the weights itself (the reference's DSnoT+SparseGPT never accumulates its Hessian). Use wanda, multiflow or magnitude",
            ));
        }
        if self.top_up != TopUp::Uniform && self.method == PruneMethod::Dense {
            return Err(Error::invalid(
                "--top-up",
                "--prune-method dense prunes nothing; allocate it with --top-up uniform",
            ));
        }
        if self.top_up != TopUp::Uniform && self.nm.is_some() {
            return Err(Error::invalid(
                "--nm",
                "N:M fixes the sparsity of every row; use it with --top-up uniform",
            ));
        }
        self.validate_fixed_lambdas()?;
        if !self.needs_calibration() && (!self.calib.is_empty() || self.calib_windows.is_some()) {
            return Err(Error::invalid(
                "--calib",
                format!(
                    "--prune-method {} uses no calibration data; drop --calib",
                    name(self.method)
                ),
            ));
        }
        Ok(())
    }
}

impl PruneConfig {
    /// A fixed λ needs the step it replaces, and a value the grids could hold.
    fn validate_fixed_lambdas(&self) -> Result<()> {
        let fixed = [
            (
                "--neuroal-block-lambda",
                self.neuroal_lambdas.block,
                NeuroalStep::Row,
            ),
            (
                "--neuroal-row-lambda",
                self.neuroal_lambdas.row,
                NeuroalStep::Block,
            ),
        ];
        for (flag, lambda, without) in fixed {
            let Some(lambda) = lambda else { continue };
            if self.top_up != TopUp::Neuroal {
                return Err(Error::invalid(
                    flag,
                    "fixes a NeuroAL λ; use it with --top-up neuroal",
                ));
            }
            if !(0.0..=0.5).contains(&lambda) {
                return Err(Error::invalid(
                    flag,
                    format!("{lambda} is outside [0, 0.5]; the search's grids span 0 to 0.25"),
                ));
            }
            if self.neuroal_step == without {
                return Err(Error::invalid(
                    flag,
                    format!(
                        "names a step that --neuroal-step {} does not run",
                        name(without)
                    ),
                ));
            }
        }
        if self.neuroal_lambdas.row.is_some() && self.method == PruneMethod::Sparsegpt {
            return Err(Error::invalid(
                "--neuroal-row-lambda",
                "SparseGPT takes one sparsity per matrix, so NeuroAL skips its row step",
            ));
        }
        Ok(())
    }

    /// Whether the job runs the model on calibration windows: a calibrated base score, or an
    /// allocation measured on activations (NeuroAL's alignment, OWL's outliers).
    pub fn needs_calibration(&self) -> bool {
        self.method.needs_calibration()
            || matches!(self.top_up, TopUp::Neuroal | TopUp::Owl | TopUp::Dsnot)
    }
}

fn name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Loads and checks a model and lists its prunable linears (`neuroal-onnx inspect`).
pub fn inspect(path: &Path) -> Result<(OnnxModel, Discovery)> {
    let model = OnnxModel::load(path)?;
    let discovery = discover(&model)?;
    Ok((model, discovery))
}

/// Runs a pruning job and writes the pruned model and its report.
pub fn prune(config: &PruneConfig, progress: &Progress) -> Result<Report> {
    config.validate()?;
    preflight(config)?;
    let mut timings = BTreeMap::new();

    let stage = progress.stage("load and discover");
    let (model, discovery) = inspect(&config.input)?;
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
    let sized;
    let config = match &given {
        Some(c) => {
            sized = PruneConfig {
                nsamples: c.windows.len(),
                seqlen: c.info.seqlen,
                ..config.clone()
            };
            &sized
        }
        None => config,
    };
    timings.insert("load".to_string(), stage.finish());
    progress.note(&format!(
        "  {} blocks, {} prunable linears, {:.1} M prunable weights",
        discovery.n_blocks,
        discovery.linears.len(),
        discovery.prunable_params() as f64 / 1e6
    ));
    let mut plan = allocate::uniform(&discovery, config.sparsity, config.nm)?;
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
    let mut search = None;
    let mut allocation_detail = None;

    // Everything that can fail on the user's input is checked before the long work starts.
    let text_needed = config.calib.iter().any(|p| !is_token_file(p))
        || !config.eval_texts.is_empty()
        || !config.task_files.is_empty();
    let tokenizer = if text_needed || config.tokenizer.is_some() {
        let t = TextTokenizer::load(&model.dir, config.tokenizer.as_deref())?;
        check_vocabulary(&t, &discovery)?;
        Some(t)
    } else {
        // Self-generated calibration uses the tokenizer, when there is one, for its BOS id.
        TextTokenizer::load(&model.dir, None).ok()
    };
    let evaluation = match &tokenizer {
        Some(t) => EvalSet::prepare(config, eval_seqlen, t)?,
        None => None,
    };
    let runtime = if config.needs_calibration() || evaluation.is_some() {
        let library = locate_library(config.ort_lib.as_deref())?;
        Some(Runtime::new(
            &library,
            config.device,
            config.threads,
            progress,
        )?)
    } else {
        None
    };
    let (masker, why) = match config.method {
        PruneMethod::Magnitude | PruneMethod::Wanda => prune::Masker::select(config.device)?,
        _ => (prune::Masker::Cpu, None),
    };
    if let Some(why) = why {
        progress.note(&format!(
            "note: CUDA mask kernels unavailable ({why}); masks on the CPU"
        ));
    }
    let calibration = match &runtime {
        Some(_) if given.is_some() => given,
        Some(rt) if config.needs_calibration() && config.calib.is_empty() => {
            let stage = progress.stage("generate calibration");
            // The BOS prompt takes one position before the window.
            let seqlen = discovery
                .max_positions
                .map_or(seqlen, |m| seqlen.min(m - 1));
            let c =
                Calibration::generate(config, seqlen, rt, &model, tokenizer.as_ref(), progress)?;
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

    let stage = progress.stage("prune");
    if config.top_up == TopUp::Alpha {
        let (chosen, detail) = allocation::alpha(&model, &discovery, config)?;
        plan = chosen;
        allocation_detail = Some(detail);
    }
    // Pruned matrices go to the output's data file as they are pruned: one at a time in memory.
    let mut output = ModelWriter::create(&model, &config.output, &SaveOptions::default())?;
    let (pruned, sums_site) = match (&calibration, &runtime) {
        (Some(calib), Some(rt)) => {
            let dsnot = config.top_up == TopUp::Dsnot;
            let mut pruner = SequentialPruner::new(&model, &discovery, rt, config.method, dsnot)?
                .with_masker(&masker);
            // The measured allocations decide the plan before the final pass.
            match config.top_up {
                TopUp::Owl => {
                    let (chosen, detail) =
                        allocation::owl(&model, &discovery, rt, &calib.windows, config)?;
                    plan = chosen;
                    allocation_detail = Some(detail);
                }
                TopUp::Neuroal => {
                    let (chosen, report) = search::neuroal(
                        &model,
                        &discovery,
                        rt,
                        &masker,
                        &calib.windows,
                        config,
                        progress,
                    )?;
                    timings.insert("search".to_string(), report.seconds);
                    plan = chosen;
                    search = Some(report);
                }
                TopUp::Uniform | TopUp::Alpha | TopUp::Dsnot => {}
            }
            progress.note(&format!(
                "  final pass: {} windows × {} tokens through {} blocks, dense and pruned",
                calib.windows.len(),
                calib.windows.first().map_or(0, Vec::len),
                discovery.n_blocks
            ));
            // The search ran on pruners of its own: these timings are the final pass's.
            let pass = pruner.run(&calib.windows, &plan, Some(&mut output), false, progress)?;
            timings.insert("prune_forward".to_string(), pruner.timings.forward);
            timings.insert("prune_statistics".to_string(), pruner.timings.statistics);
            timings.insert("prune_masks".to_string(), pruner.timings.masks);
            (pass.pruned, pruner.sums_site())
        }
        _ => (
            prune_without_data(
                config.method,
                &model,
                &discovery,
                &plan,
                &masker,
                &mut output,
                progress,
            )?,
            None,
        ),
    };
    timings.insert("prune_write".to_string(), pruned.write_seconds);
    timings.insert("prune".to_string(), stage.finish());

    let stage = progress.stage("write");
    let saved = output.finish()?;
    timings.insert("write".to_string(), stage.finish());
    // From here on a failure removes what this run wrote, and reports of an earlier run at the
    // same path describe a model that is gone.
    let mut outputs = OutputGuard::new(&saved);
    for companion in &companions {
        outputs.add(companion.target.clone());
        companion.write()?;
    }
    for stale in [
        report_path(&config.output),
        html_report_path(&config.output),
    ] {
        remove_if_present(&stale)?;
    }

    let stage = progress.stage("measure the files");
    let deployment = deployment_info(&pruned.compressed, config.nm);
    let mut written = vec![saved.model_path.clone()];
    written.extend(saved.data_path.clone());
    written.extend(companions.iter().map(|c| c.target.clone()));
    let (input_files, output_files) =
        (file_digests(&model.input_files())?, file_digests(&written)?);
    timings.insert("measure_files".to_string(), stage.finish());

    let (mut evaluations, mut zero_shot) = (Vec::new(), Vec::new());
    if let (Some(eval), Some(rt)) = (&evaluation, &runtime) {
        let stage = progress.stage("evaluate dense and pruned");
        let pruned_model = OnnxModel::load(&config.output)?;
        (evaluations, zero_shot) = eval.compare(rt, &model, &pruned_model, progress)?;
        timings.insert("evaluate".to_string(), stage.finish());
    }

    let report = Report {
        schema_version: crate::report::SCHEMA_VERSION,
        tool: env!("CARGO_PKG_NAME").to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        command_line: config.command_line.clone(),
        onnx_runtime: runtime.as_ref().map(|rt| RuntimeInfo {
            version: rt.version(),
            library: rt.library().to_path_buf(),
            device: rt.device(),
            cuda_fallback: rt.fallback_reason(),
        }),
        input: InputInfo {
            model: config.input.clone(),
            blocks: discovery.n_blocks,
            prunable_linears: discovery.linears.len(),
            prunable_params: discovery.prunable_params(),
            excluded_weights: discovery.excluded.len(),
            files: input_files,
        },
        output: OutputInfo {
            model: saved.model_path.clone(),
            data_file: saved.data_path.clone(),
            external_tensors: saved.external_tensors,
            files: output_files,
        },
        method: MethodInfo {
            prune_method: config.method,
            top_up: config.top_up,
            sparsity: config.sparsity,
            nm: config.nm.map(|(n, m)| format!("{n}:{m}")),
            seed: config.seed,
            top_up_parameters: top_up_parameters(config),
        },
        calibration: calibration.map(|c| CalibrationInfo {
            activation_sums: sums_site.map(|s| s.name().to_string()),
            ..c.info
        }),
        search,
        allocation: allocation_detail,
        sparsity: summarize_sparsity(config.sparsity, &discovery, pruned.per_matrix),
        evaluation: evaluations,
        zero_shot,
        deployment,
        timings_s: timings,
        peak_rss_mib: crate::report::peak_rss_mib(),
    };
    outputs.add(report_path(&config.output));
    report.write_json(&report_path(&config.output))?;
    outputs.add(html_report_path(&config.output));
    report.write_html(&html_report_path(&config.output))?;
    outputs.keep();
    Ok(report)
}

/// The files a run has written; removed when the run fails before [`OutputGuard::keep`], so that
/// a failed run leaves no model without its report.
struct OutputGuard {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl OutputGuard {
    fn new(saved: &SavedModel) -> Self {
        let mut paths = vec![saved.model_path.clone()];
        paths.extend(saved.data_path.clone());
        Self { paths, keep: false }
    }

    fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

/// Removes a file left by an earlier run, if there is one.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl Drop for OutputGuard {
    fn drop(&mut self) {
        if !self.keep {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
        }
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
        TopUp::Dsnot => Some(TopUpParameters::Dsnot {
            max_cycles: prune::dsnot::MAX_CYCLES,
            update_threshold: prune::dsnot::THRESHOLD,
        }),
    }
}

/// A tokenizer with more tokens than the model's embedding rows does not belong to the model.
fn check_vocabulary(tokenizer: &TextTokenizer, discovery: &Discovery) -> Result<()> {
    match discovery.vocab {
        Some(rows) if tokenizer.vocab_size() > rows => Err(Error::Tokenizer {
            path: tokenizer.path.clone(),
            message: format!(
                "has {} tokens but the model's embedding has {rows} rows; it belongs to another model (pass the right --tokenizer)",
                tokenizer.vocab_size()
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks that every input exists and the output can be written, before hours of work.
fn preflight(config: &PruneConfig) -> Result<()> {
    if !config.input.is_file() {
        return Err(Error::io(
            &config.input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        ));
    }
    if let (Ok(a), Ok(b)) = (config.input.canonicalize(), config.output.canonicalize()) {
        if a == b {
            return Err(Error::invalid(
                "output",
                format!(
                    "{} is the input model; choose another output path",
                    config.output.display()
                ),
            ));
        }
    }
    for path in config
        .eval_texts
        .iter()
        .chain(&config.calib)
        .chain(&config.task_files)
    {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
    }
    // Probe the output folder with a temporary file that is removed again.
    drop(AtomicFile::create(&config.output)?);
    Ok(())
}

/// What pruning did to every matrix: its sparsity and, for the matrices written, how well the
/// dense and the pruned bytes compress.
#[derive(Default)]
pub(crate) struct PrunedWeights {
    /// Each matrix's sparsity, in discovery order.
    per_matrix: Vec<MatrixSparsity>,
    /// Each written matrix's stored and compressed sizes.
    compressed: Vec<CompressedSizes>,
    /// Seconds spent writing matrices and compressing them.
    write_seconds: f64,
}

impl PrunedWeights {
    /// Records the sparsity of a pruned matrix (`[out, in]` values).
    pub(crate) fn record(&mut self, linear: &Linear, weights: &[f32], target: f64) {
        let zeros = weights.iter().filter(|w| **w == 0.0).count();
        self.per_matrix.push(MatrixSparsity {
            block: linear.block,
            module: linear.module.clone(),
            weight: linear.weight.name.clone(),
            shape: [linear.out_features, linear.in_features],
            target,
            measured: zeros as f64 / linear.numel() as f64,
        });
    }

    /// Hands a matrix's new stored bytes to `output` (`None`: unchanged, nothing to write) and
    /// measures how its dense and pruned bytes compress, for the report's deployment section.
    pub(crate) fn write(
        &mut self,
        model: &OnnxModel,
        linear: &Linear,
        bytes: Option<&[u8]>,
        output: &mut ModelWriter<'_>,
    ) -> Result<()> {
        let clock = std::time::Instant::now();
        let tensor = model
            .initializer(&linear.weight)
            .ok_or_else(|| Error::tensor(&linear.weight.name, "is no longer in the model"))?;
        let dense = model.tensor_bytes(&linear.weight.graph, tensor)?;
        self.compressed.push(CompressedSizes::measure(
            &linear.weight.name,
            &dense,
            bytes,
        )?);
        if let Some(bytes) = bytes {
            output.put(&linear.weight, bytes)?;
        }
        self.write_seconds += clock.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Prunes every linear with a method that needs no data (magnitude, dense), each matrix going to
/// `output` as soon as it is pruned.
fn prune_without_data(
    method: PruneMethod,
    model: &OnnxModel,
    discovery: &Discovery,
    plan: &SparsityPlan,
    masker: &prune::Masker,
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
            prune::prune_matrix(
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
            pruned.write(model, linear, Some(&linear.encode_out_in(&weights)), output)?;
        }
    }
    progress.item("matrices", total, total);
    Ok(pruned)
}

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
