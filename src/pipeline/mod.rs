//! The whole job, stage by stage: validate, load, discover, allocate, prune, write, evaluate,
//! report. The CLI builds a [`PruneConfig`] and calls [`prune`]; nothing here parses arguments.

mod staged;

pub use staged::StagedRun;

use crate::allocate::{self, NeuroalStep, SparsityPlan, TopUp};
use crate::atomic::AtomicFile;
use crate::calib::TextTokenizer;
use crate::error::{Error, Result};
use crate::eval::{perplexity, Perplexity};
use crate::graph::{discover, Discovery};
use crate::onnx::{save_model, OnnxModel, SaveOptions, TensorKey};
use crate::progress::Progress;
use crate::prune::{self, MaskRule, PruneMethod};
use crate::report::{
    report_path, BlockSparsity, InputInfo, MatrixSparsity, MethodInfo, OutputInfo, Report,
    RuntimeInfo, SparsityInfo, TextEvaluation,
};
use crate::runtime::{locate_library, CausalLm, Device, Runtime};
use std::collections::{BTreeMap, HashMap};
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
    /// Calibration windows.
    pub nsamples: usize,
    /// Tokens per calibration and evaluation window.
    pub seqlen: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Calibration text files.
    pub calib: Vec<PathBuf>,
    /// `tokenizer.json` (default: next to the model).
    pub tokenizer: Option<PathBuf>,
    /// Held-out texts to measure perplexity on.
    pub eval_texts: Vec<PathBuf>,
    /// At most this many evaluation windows per text.
    pub eval_windows: Option<usize>,
    /// Where ONNX Runtime runs.
    pub device: Device,
    /// `libonnxruntime` to load.
    pub ort_lib: Option<PathBuf>,
    /// N:M structured sparsity.
    pub nm: Option<(usize, usize)>,
    /// ONNX Runtime intra-op threads (0: its default).
    pub threads: usize,
    /// The command line, for the report.
    pub command_line: Vec<String>,
}

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
        if self.method.needs_calibration() {
            return Err(Error::not_implemented(
                format!("--prune-method {}", name(self.method)),
                "this version prunes with --prune-method magnitude or dense",
            ));
        }
        if self.top_up != TopUp::Uniform {
            return Err(Error::not_implemented(
                format!("--top-up {}", name(self.top_up)),
                "this version allocates with --top-up uniform",
            ));
        }
        if self.nm.is_some() {
            return Err(Error::not_implemented(
                "--nm",
                "drop --nm for unstructured sparsity",
            ));
        }
        if !self.calib.is_empty() {
            return Err(Error::not_implemented(
                "--calib",
                "magnitude pruning needs no calibration data; drop --calib",
            ));
        }
        Ok(())
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
    timings.insert("load".to_string(), stage.finish());
    progress.note(&format!(
        "  {} blocks, {} prunable linears, {:.1} M prunable weights",
        discovery.n_blocks,
        discovery.linears.len(),
        discovery.prunable_params() as f64 / 1e6
    ));

    // Tokenizer, texts and ONNX Runtime are checked before any pruning work.
    let evaluation = EvalSet::prepare(config, &model, progress)?;
    let mut dense_ppl = Vec::new();
    if let Some(eval) = &evaluation {
        let stage = progress.stage("evaluate dense");
        dense_ppl = eval.perplexities(&model, "dense", progress)?;
        timings.insert("evaluate_dense".to_string(), stage.finish());
    }

    let stage = progress.stage("prune");
    let plan = allocate::uniform(&discovery, config.sparsity);
    let PrunedWeights {
        replacements,
        per_matrix,
    } = prune_weights(config.method, &model, &discovery, &plan, progress)?;
    timings.insert("prune".to_string(), stage.finish());

    let stage = progress.stage("write");
    let saved = save_model(
        &model,
        &replacements,
        &config.output,
        &SaveOptions::default(),
    )?;
    timings.insert("write".to_string(), stage.finish());
    drop(replacements);

    let mut evaluations = Vec::new();
    let mut runtime_info = None;
    if let Some(eval) = &evaluation {
        let stage = progress.stage("evaluate pruned");
        let pruned_model = OnnxModel::load(&config.output)?;
        let pruned_ppl = eval.perplexities(&pruned_model, "pruned", progress)?;
        for (((text, tokens), dense), pruned) in eval.texts.iter().zip(dense_ppl).zip(pruned_ppl) {
            evaluations.push(TextEvaluation {
                text: text.clone(),
                tokens: tokens.len(),
                dense,
                pruned,
            });
        }
        timings.insert("evaluate_pruned".to_string(), stage.finish());
        runtime_info = Some(RuntimeInfo {
            version: eval.runtime.version(),
            library: eval.runtime.library().to_path_buf(),
            device: eval.runtime.device(),
            cuda_fallback: eval.runtime.fallback_reason(),
        });
    }

    let report = Report {
        schema_version: crate::report::SCHEMA_VERSION,
        tool: env!("CARGO_PKG_NAME").to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        command_line: config.command_line.clone(),
        onnx_runtime: runtime_info,
        input: InputInfo {
            model: config.input.clone(),
            blocks: discovery.n_blocks,
            prunable_linears: discovery.linears.len(),
            prunable_params: discovery.prunable_params(),
            excluded_weights: discovery.excluded.len(),
        },
        output: OutputInfo {
            model: saved.model_path.clone(),
            data_file: saved.data_path.clone(),
            external_tensors: saved.external_tensors,
        },
        method: MethodInfo {
            prune_method: config.method,
            top_up: config.top_up,
            sparsity: config.sparsity,
            seed: config.seed,
        },
        sparsity: summarize_sparsity(config.sparsity, &discovery, per_matrix),
        evaluation: evaluations,
        timings_s: timings,
    };
    report.write_json(&report_path(&config.output))?;
    Ok(report)
}

/// The outcome of pruning every linear.
struct PrunedWeights {
    /// New bytes of each changed weight, in its stored layout and type.
    replacements: HashMap<TensorKey, Vec<u8>>,
    /// Each matrix's sparsity, in discovery order.
    per_matrix: Vec<MatrixSparsity>,
}

/// Scores every linear, masks it under its rule and encodes the result in the stored layout.
fn prune_weights(
    method: PruneMethod,
    model: &OnnxModel,
    discovery: &Discovery,
    plan: &SparsityPlan,
    progress: &Progress,
) -> Result<PrunedWeights> {
    let mut replacements = HashMap::new();
    let mut per_matrix = Vec::new();
    let total = discovery.linears.len();
    for (i, (linear, rule)) in discovery.linears.iter().zip(&plan.rules).enumerate() {
        progress.item("matrices", i, total);
        let mut weights = linear.read_out_in(model)?;
        let target = if method == PruneMethod::Dense {
            0.0
        } else {
            let scores = prune::magnitude(&weights);
            let mask = prune::prune_mask(&scores, linear.out_features, linear.in_features, rule);
            mask.apply(&mut weights);
            replacements.insert(linear.weight.clone(), linear.encode_out_in(&weights));
            mean_target(rule, linear.out_features)
        };
        let zeros = weights.iter().filter(|w| **w == 0.0).count();
        per_matrix.push(MatrixSparsity {
            block: linear.block,
            module: linear.module.clone(),
            weight: linear.weight.name.clone(),
            shape: [linear.out_features, linear.in_features],
            target,
            measured: zeros as f64 / linear.numel() as f64,
        });
    }
    progress.item("matrices", total, total);
    Ok(PrunedWeights {
        replacements,
        per_matrix,
    })
}

/// Held-out texts, tokenized once, and the runtime that scores models on them.
struct EvalSet {
    runtime: Runtime,
    texts: Vec<(PathBuf, Vec<u32>)>,
    seqlen: usize,
    max_windows: Option<usize>,
}

impl EvalSet {
    /// Loads the tokenizer, tokenizes every `--eval-text` and loads ONNX Runtime; `None` when
    /// there is nothing to evaluate.
    fn prepare(
        config: &PruneConfig,
        model: &OnnxModel,
        progress: &Progress,
    ) -> Result<Option<Self>> {
        if config.eval_texts.is_empty() {
            return Ok(None);
        }
        let tokenizer = TextTokenizer::load(&model.dir, config.tokenizer.as_deref())?;
        let mut texts = Vec::new();
        for path in &config.eval_texts {
            let tokens = tokenizer.encode_file(path)?;
            if tokens.len() < 2 {
                return Err(Error::invalid(
                    "--eval-text",
                    format!("{} holds no text to evaluate on", path.display()),
                ));
            }
            texts.push((path.clone(), tokens));
        }
        let library = locate_library(config.ort_lib.as_deref())?;
        let runtime = Runtime::new(&library, config.device, config.threads, progress)?;
        Ok(Some(Self {
            runtime,
            texts,
            seqlen: config.seqlen,
            max_windows: config.eval_windows,
        }))
    }

    /// Perplexity of `model` on every text; windows are `--seqlen` long, or the whole text when
    /// it is shorter.
    fn perplexities(
        &self,
        model: &OnnxModel,
        which: &str,
        progress: &Progress,
    ) -> Result<Vec<Perplexity>> {
        let mut lm = CausalLm::open(&self.runtime, model)?;
        self.texts
            .iter()
            .map(|(path, tokens)| {
                let label = format!("{which} {}", file_label(path));
                let seqlen = self.seqlen.min(tokens.len());
                perplexity(&mut lm, tokens, seqlen, self.max_windows, progress, &label)
            })
            .collect()
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
    for path in config.eval_texts.iter().chain(&config.calib) {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such text file"),
            ));
        }
    }
    // Probe the output folder with a temporary file that is removed again.
    drop(AtomicFile::create(&config.output)?);
    Ok(())
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn mean_target(rule: &MaskRule, rows: usize) -> f64 {
    match rule {
        MaskRule::Row(s) => *s,
        MaskRule::Neuron(per_row) => per_row.iter().sum::<f64>() / rows.max(1) as f64,
    }
}

fn summarize_sparsity(
    target: f64,
    discovery: &Discovery,
    per_matrix: Vec<MatrixSparsity>,
) -> SparsityInfo {
    let mut blocks: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    let mut zeros_total = 0.0;
    for (m, linear) in per_matrix.iter().zip(&discovery.linears) {
        let zeros = m.measured * linear.numel() as f64;
        zeros_total += zeros;
        let entry = blocks.entry(m.block).or_default();
        entry.0 += zeros;
        entry.1 += linear.numel();
    }
    SparsityInfo {
        target,
        measured: zeros_total / discovery.prunable_params().max(1) as f64,
        per_block: blocks
            .into_iter()
            .map(|(block, (zeros, n))| BlockSparsity {
                block,
                measured: zeros / n.max(1) as f64,
            })
            .collect(),
        per_matrix,
    }
}
