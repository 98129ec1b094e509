//! The job's configuration and every check that can run before the long work: ranges and
//! combinations of options ([`PruneConfig::validate`]), files that must exist and an output
//! folder that must be writable ([`preflight`]), a tokenizer that must fit the model.

use crate::allocate::{EvoStart, EvoUnits, NeuroalStep, TopUp};
use crate::atomic::AtomicFile;
use crate::calib::{Sampling, TextTokenizer};
use crate::device::{Device, MemoryBudget};
use crate::error::{Error, Result};
use crate::graph::Discovery;
use crate::prune::PruneMethod;
use std::path::PathBuf;

use super::FixedLambdas;

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
    /// Re-fit the kept weights of every pruned matrix to the dense outputs (`--reconstruct`).
    pub reconstruct: bool,
    /// OWL's outlier threshold M (`--owl-m`).
    pub owl_m: f64,
    /// OWL's sparsity spread λ (`--owl-lambda`).
    pub owl_lambda: f64,
    /// AlphaPruning's spread ε (`--alpha-epsilon`).
    pub alpha_epsilon: f64,
    /// DLP's spread α (`--dlp-alpha`).
    pub dlp_alpha: f64,
    /// ONNX Runtime intra-op threads (0: its default).
    pub threads: usize,
    /// Search candidates (NeuroAL's, or the evolutionary search's windows) evaluated at a time
    /// (0: one per core, at most 4, while memory allows).
    pub search_jobs: usize,
    /// Memory the job may use (`--memory-budget`, else what was available when it started);
    /// `None` when unknown.
    pub memory_budget: Option<MemoryBudget>,
    /// Generations of the evolutionary search (`--evo-generations`).
    pub evo_generations: usize,
    /// Where the evolutionary search starts (`--evo-start`).
    pub evo_start: EvoStart,
    /// What the evolutionary search gives a level of its own (`--evo-units`).
    pub evo_units: EvoUnits,
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
                "dsnot refines a score-based mask; SparseGPT rebuilds the weights itself (the reference's DSnoT+SparseGPT never accumulates its Hessian). Use wanda, multiflow, ria or magnitude",
            ));
        }
        if self.reconstruct && matches!(self.method, PruneMethod::Sparsegpt | PruneMethod::Dense) {
            return Err(Error::invalid(
                "--reconstruct",
                format!(
                    "re-fits the weights that a score-based mask keeps; --prune-method {} {}. Use magnitude, wanda, multiflow or ria",
                    self.method.as_str(),
                    match self.method {
                        PruneMethod::Sparsegpt => "already updates them as it prunes",
                        _ => "prunes nothing",
                    }
                ),
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
        if self.top_up == TopUp::Evo && self.method == PruneMethod::Sparsegpt {
            return Err(Error::invalid(
                "--top-up",
                "evo builds every block's masks at any level from one score; SparseGPT's masks come from its own weight updates. Use wanda, multiflow, ria or magnitude (with --reconstruct to re-fit the kept weights)",
            ));
        }
        if self.top_up == TopUp::Evo && self.neuroal_step == NeuroalStep::Row {
            return Err(Error::invalid(
                "--neuroal-step",
                "evo searches the block levels that `row` leaves uniform; use both (the search, then NeuroAL's row step) or block (the search alone)",
            ));
        }
        self.validate_fixed_lambdas()?;
        if !self.needs_calibration() && (!self.calib.is_empty() || self.calib_windows.is_some()) {
            return Err(Error::invalid(
                "--calib",
                format!(
                    "--prune-method {} uses no calibration data; drop --calib",
                    self.method.as_str()
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
                        without.as_str()
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

    /// Whether the job runs the model on calibration windows: a calibrated base score, an
    /// allocation measured on activations (NeuroAL's alignment, OWL's outliers), or the
    /// reconstruction of the kept weights.
    pub fn needs_calibration(&self) -> bool {
        self.method.needs_calibration()
            || self.reconstruct
            || matches!(
                self.top_up,
                TopUp::Neuroal | TopUp::Owl | TopUp::Dsnot | TopUp::Dlp | TopUp::Evo
            )
    }
}

/// A tokenizer with more tokens than the model's embedding rows does not belong to the model.
pub(super) fn check_vocabulary(tokenizer: &TextTokenizer, discovery: &Discovery) -> Result<()> {
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
pub(super) fn preflight(config: &PruneConfig) -> Result<()> {
    if !config.input.is_file() {
        return Err(Error::io(
            &config.input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        ));
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
