//! Command-line flags, kept apart from the validated [`PruneConfig`] the library receives.

use clap::{Args, Parser, Subcommand, ValueEnum};
use neuroal_onnx::allocate::{EvoStart, EvoUnits, NeuroalStep, TopUp};
use neuroal_onnx::calib::Sampling;
use neuroal_onnx::device::{parse_size, Device, MemoryBudget};
use neuroal_onnx::pipeline::{
    FixedLambdas, PruneConfig, GENERATED_SEQLEN, GENERATED_WINDOWS, TEXT_SEQLEN, TEXT_WINDOWS,
};
use neuroal_onnx::prune::PruneMethod;
use neuroal_onnx::{Error, Result};
use std::path::PathBuf;

/// One-shot pruning of exported decoder-only LLMs in ONNX (NeuroAL and its competitors).
///
/// Reads IN.onnx, writes the pruned OUT.onnx (weights in OUT.onnx.data) and OUT.report.json.
#[derive(Debug, Parser)]
#[command(
    name = "neuroal-onnx",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// Subcommands besides the default pruning job.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the decoder blocks, the prunable linears and the weights left alone.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compile the CUDA mask kernels (`--ptx`, no GPU needed) or check them against the CPU
    /// path on a GPU (`--check`). For CI and scripts/gpu-check.sh, hidden from --help.
    #[command(hide = true)]
    Kernels(KernelsArgs),
    /// Print the JSON Schema of the report, generated from its types (docs/report.schema.json is
    /// this output). Hidden from --help.
    #[command(hide = true)]
    Schema,
}

/// Flags of the hidden `kernels` subcommand.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["ptx", "check"]))]
pub struct KernelsArgs {
    /// Compile every kernel source to PTX with NVRTC; print each one's size and entry points.
    #[arg(long)]
    pub ptx: bool,
    /// Also write each PTX to DIR/<source>.<arch>.ptx.
    #[arg(long, value_name = "DIR", requires = "ptx")]
    pub ptx_dir: Option<PathBuf>,
    /// On a GPU: compare CUDA and CPU masks on random matrices and time the kernels.
    #[arg(long)]
    pub check: bool,
    /// Seed of the check's random matrices (default: from the clock, printed).
    #[arg(long, requires = "check")]
    pub seed: Option<u64>,
    /// Also write the check's Markdown table to FILE.
    #[arg(long, value_name = "FILE", requires = "check")]
    pub out: Option<PathBuf>,
}

/// Flags of the pruning job.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The exported model to prune (never modified).
    #[arg(required = true)]
    pub input: Option<PathBuf>,
    /// Where to write the pruned model.
    #[arg(required = true)]
    pub output: Option<PathBuf>,
    /// Fraction of the prunable weights to set to zero, in [0, 1).
    #[arg(long, required = true, allow_negative_numbers = true)]
    pub sparsity: Option<f64>,
    /// Base score that ranks the weights.
    #[arg(long, value_enum, default_value = "wanda")]
    pub prune_method: MethodArg,
    /// How the sparsity is distributed over blocks and rows.
    #[arg(long, value_enum, default_value = "neuroal")]
    pub top_up: TopUpArg,
    /// Which NeuroAL search steps to run [default: both; block with --top-up evo].
    #[arg(long, value_enum, value_name = "STEP")]
    pub neuroal_step: Option<StepArg>,
    /// Use this block-wise λ instead of searching it (e.g. the `search.block_lambda` of an
    /// earlier report, to prune again without the search's cost).
    #[arg(long, value_name = "LAMBDA")]
    pub neuroal_block_lambda: Option<f64>,
    /// Use this row-wise λ instead of searching it (`search.row_lambda` of an earlier report).
    #[arg(long, value_name = "LAMBDA")]
    pub neuroal_row_lambda: Option<f64>,
    /// Calibration windows [default: 128 with --calib, 32 when the model writes its own text].
    #[arg(long)]
    pub nsamples: Option<usize>,
    /// Tokens per calibration and evaluation window, capped by the text and the model's position
    /// tables [default: 2048 with --calib, 256 when the model writes its own text].
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature of the model's own calibration text.
    #[arg(long, default_value_t = Sampling::default().temperature)]
    pub calib_temperature: f64,
    /// Nucleus (top-p) of the model's own calibration text: sample among the most likely tokens
    /// that make up this much probability.
    #[arg(long, default_value_t = Sampling::default().top_p)]
    pub calib_top_p: f64,
    /// Calibration text file (repeat for several documents).
    #[arg(long)]
    pub calib: Vec<PathBuf>,
    /// Calibration windows used exactly as given, in order: a JSON array of token-id arrays of one
    /// length (--nsamples and --seqlen come from it).
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["calib", "nsamples", "seqlen"])]
    pub calib_windows: Option<PathBuf>,
    /// tokenizer.json to use (default: the one next to the model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Held-out text to measure perplexity on, dense and pruned (repeatable).
    #[arg(long)]
    pub eval_text: Vec<PathBuf>,
    /// Evaluate at most this many windows of each text.
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Tokens per evaluation window [default: the calibration windows' --seqlen].
    #[arg(long)]
    pub eval_seqlen: Option<usize>,
    /// Where ONNX Runtime runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// libonnxruntime to load (default: $ORT_DYLIB_PATH, then libonnxruntime.so beside the binary,
    /// then in ../lib from it, then the build tree's .cache/ort/lib).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// N:M structured sparsity along the input dimension, e.g. 2:4.
    #[arg(long, value_parser = parse_nm)]
    pub nm: Option<(usize, usize)>,
    /// After the masks, re-fit the weights each row keeps to reproduce the dense layer's outputs
    /// on the calibration windows (least squares; every row keeps as many weights).
    #[arg(long)]
    pub reconstruct: bool,
    /// OWL outlier threshold M, only with --top-up owl [default: 5].
    #[arg(long, value_name = "M")]
    pub owl_m: Option<f64>,
    /// OWL sparsity spread λ, only with --top-up owl [default: 0.08].
    #[arg(long, value_name = "LAMBDA")]
    pub owl_lambda: Option<f64>,
    /// AlphaPruning spread ε, only with --top-up alpha [default: 0.3].
    #[arg(long, value_name = "EPSILON")]
    pub alpha_epsilon: Option<f64>,
    /// DLP sparsity spread α, only with --top-up dlp [default: 0.15].
    #[arg(long, value_name = "ALPHA")]
    pub dlp_alpha: Option<f64>,
    /// Generations of the evolutionary search, only with --top-up evo [default: 40].
    #[arg(long, value_name = "N")]
    pub evo_generations: Option<usize>,
    /// Where the evolutionary search starts, only with --top-up evo [default: neuroal].
    #[arg(long, value_enum, value_name = "START")]
    pub evo_start: Option<EvoStartArg>,
    /// What the evolutionary search gives a level of its own, only with --top-up evo [default:
    /// block].
    #[arg(long, value_enum, value_name = "UNITS")]
    pub evo_units: Option<EvoUnitsArg>,
    /// Evaluation tasks: language modelling, zero-shot, both or none (a comma-separated list).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lm")]
    pub tasks: Vec<Task>,
    /// Zero-shot task file: JSON lines of {"context", "choices", "gold"} (repeatable).
    #[arg(long)]
    pub task_file: Vec<PathBuf>,
    /// ONNX Runtime threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Search candidates evaluated at a time (NeuroAL's, and the evolutionary search's candidate
    /// windows), each with its own sessions and a share of the cores (0: one per core, at most 4,
    /// while memory allows). The result depends on it only
    /// through the ONNX Runtime threads each job gets, whose sums can change with their number.
    #[arg(long, default_value_t = 0)]
    pub search_jobs: usize,
    /// Memory the job may use, e.g. 4G or 512M (binary units) [default: the memory available
    /// when it starts]. Sizes the search jobs; work that would need to open the whole model in
    /// ONNX Runtime beyond it is refused before it starts, naming the flag to use instead.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--prune-method`: the values of [`PruneMethod`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// |W|, per output row; needs no data.
    Magnitude,
    /// |W| · ‖X_j‖ (Sun et al. 2023).
    Wanda,
    /// Optimal-brain-surgeon reconstruction (Frantar & Alistarh 2023).
    Sparsegpt,
    /// |W| · row importance · column importance.
    Multiflow,
    /// Relative importance (|W|'s share of its row and column) · ‖X_j‖^0.5 (Zhang et al. 2024).
    Ria,
    /// Nothing pruned: the dense baseline, written and evaluated like a pruned model.
    Dense,
}

impl From<MethodArg> for PruneMethod {
    fn from(arg: MethodArg) -> Self {
        match arg {
            MethodArg::Magnitude => PruneMethod::Magnitude,
            MethodArg::Wanda => PruneMethod::Wanda,
            MethodArg::Sparsegpt => PruneMethod::Sparsegpt,
            MethodArg::Multiflow => PruneMethod::Multiflow,
            MethodArg::Ria => PruneMethod::Ria,
            MethodArg::Dense => PruneMethod::Dense,
        }
    }
}

/// `--top-up`: the values of [`TopUp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopUpArg {
    /// Every matrix gets the target sparsity.
    Uniform,
    /// Outlier-weighted layerwise sparsity (Yin et al. 2024).
    Owl,
    /// Heavy-tailed self-regularization based allocation (Lu et al. 2024).
    Alpha,
    /// Training-free mask refinement (Zhang et al. 2024).
    Dsnot,
    /// Neuron alignment search over block and row sparsity (this tool's default).
    Neuroal,
    /// Per-block sparsity from each block's mean Wanda score (Chen et al. 2025).
    Dlp,
    /// Evolutionary search over block sparsity against the dense model's next-token
    /// distributions, started from NeuroAL's block step or from uniform.
    Evo,
}

impl From<TopUpArg> for TopUp {
    fn from(arg: TopUpArg) -> Self {
        match arg {
            TopUpArg::Uniform => TopUp::Uniform,
            TopUpArg::Owl => TopUp::Owl,
            TopUpArg::Alpha => TopUp::Alpha,
            TopUpArg::Dsnot => TopUp::Dsnot,
            TopUpArg::Neuroal => TopUp::Neuroal,
            TopUpArg::Dlp => TopUp::Dlp,
            TopUpArg::Evo => TopUp::Evo,
        }
    }
}

/// `--evo-start`: the values of [`EvoStart`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvoStartArg {
    /// NeuroAL's block step: its searched λ ramp.
    Neuroal,
    /// Every block at the target.
    Uniform,
}

impl From<EvoStartArg> for EvoStart {
    fn from(arg: EvoStartArg) -> Self {
        match arg {
            EvoStartArg::Neuroal => EvoStart::Neuroal,
            EvoStartArg::Uniform => EvoStart::Uniform,
        }
    }
}

/// `--evo-units`: the values of [`EvoUnits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvoUnitsArg {
    /// Each block: all its matrices at one level.
    Block,
    /// Each block's attention matrices, and its MLP's, apart.
    Group,
}

impl From<EvoUnitsArg> for EvoUnits {
    fn from(arg: EvoUnitsArg) -> Self {
        match arg {
            EvoUnitsArg::Block => EvoUnits::Block,
            EvoUnitsArg::Group => EvoUnits::Group,
        }
    }
}

/// `--neuroal-step`: the values of [`NeuroalStep`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StepArg {
    /// Block-wise λ search only.
    Block,
    /// Row-wise λ search only (on uniform blocks).
    Row,
    /// Block search, then row search.
    Both,
}

impl From<StepArg> for NeuroalStep {
    fn from(arg: StepArg) -> Self {
        match arg {
            StepArg::Block => NeuroalStep::Block,
            StepArg::Row => NeuroalStep::Row,
            StepArg::Both => NeuroalStep::Both,
        }
    }
}

/// `--device`: the values of [`Device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CUDA execution provider when it loads, else the CPU (with one line saying so).
    Auto,
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider; an error when it cannot be used.
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(arg: DeviceArg) -> Self {
        match arg {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
}

/// `--tasks`: what the job evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// Perplexity and agreement on the --eval-text files.
    Lm,
    /// Multiple-choice accuracy on the --task-file files.
    ZeroShot,
    /// `lm` and `zero-shot`.
    Both,
    /// No evaluation.
    None,
}

/// `--owl-m` when not given.
const OWL_M: f64 = 5.0;
/// `--owl-lambda` when not given.
const OWL_LAMBDA: f64 = 0.08;
/// `--alpha-epsilon` when not given.
const ALPHA_EPSILON: f64 = 0.3;
/// `--dlp-alpha` when not given (the authors' default).
const DLP_ALPHA: f64 = 0.15;
/// `--evo-generations` when not given (docs/methods.md §5.2).
const EVO_GENERATIONS: usize = 40;

/// Which evaluations a `--tasks` list asks for: `(lm, zero_shot)`.
fn evaluations(tasks: &[Task]) -> (bool, bool) {
    let has = |t: Task| tasks.contains(&t) || tasks.contains(&Task::Both);
    (has(Task::Lm), has(Task::ZeroShot))
}

/// The `--tasks` list as given, for messages (`lm,zero-shot`).
fn tasks_text(tasks: &[Task]) -> String {
    let names: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.to_possible_value().map(|v| v.get_name().to_string()))
        .collect();
    names.join(",")
}

/// Refuses an allocation's option `flag` (when `given`) unless `--top-up` is `owner`.
fn only_with(given: bool, flag: &str, owner: TopUp, top_up: TopUp) -> Result<()> {
    if given && top_up != owner {
        return Err(Error::invalid(
            flag,
            format!(
                "applies only to --top-up {}, not --top-up {}",
                owner.as_str(),
                top_up.as_str()
            ),
        ));
    }
    Ok(())
}

fn parse_nm(s: &str) -> std::result::Result<(usize, usize), String> {
    let (n, m) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not N:M (e.g. 2:4)"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': N is not a number"))?;
    let m: usize = m
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': M is not a number"))?;
    if m == 0 || n == 0 || n >= m {
        return Err(format!(
            "'{s}': need 0 < N < M (N weights of every M are pruned)"
        ));
    }
    Ok((n, m))
}

impl PruneArgs {
    /// The validated library configuration.
    pub fn into_config(self, command_line: Vec<String>) -> Result<PruneConfig> {
        let missing = |what: &str| Error::invalid(what, "is required");
        let top_up = TopUp::from(self.top_up);
        only_with(self.owl_m.is_some(), "--owl-m", TopUp::Owl, top_up)?;
        only_with(
            self.owl_lambda.is_some(),
            "--owl-lambda",
            TopUp::Owl,
            top_up,
        )?;
        let alpha_given = self.alpha_epsilon.is_some();
        only_with(alpha_given, "--alpha-epsilon", TopUp::Alpha, top_up)?;
        only_with(self.dlp_alpha.is_some(), "--dlp-alpha", TopUp::Dlp, top_up)?;
        only_with(
            self.evo_generations.is_some(),
            "--evo-generations",
            TopUp::Evo,
            top_up,
        )?;
        only_with(self.evo_start.is_some(), "--evo-start", TopUp::Evo, top_up)?;
        only_with(self.evo_units.is_some(), "--evo-units", TopUp::Evo, top_up)?;
        let (lm, zero_shot) = evaluations(&self.tasks);
        let tasks = tasks_text(&self.tasks);
        if self.tasks.contains(&Task::None) && self.tasks.len() > 1 {
            return Err(Error::invalid(
                "--tasks",
                format!("'{tasks}': 'none' cannot be listed with other tasks"),
            ));
        }
        if zero_shot && self.task_file.is_empty() {
            return Err(Error::invalid(
                "--tasks",
                format!("'{tasks}' needs at least one --task-file FILE.jsonl"),
            ));
        }
        if !zero_shot && !self.task_file.is_empty() {
            return Err(Error::invalid(
                "--task-file",
                format!("is not used with --tasks {tasks}; add --tasks both or --tasks zero-shot"),
            ));
        }
        if !lm && !self.eval_text.is_empty() {
            return Err(Error::invalid(
                "--eval-text",
                format!("is not used with --tasks {tasks}; add --tasks both or --tasks lm"),
            ));
        }
        let self_generated = self.calib.is_empty() && self.calib_windows.is_none();
        let config = PruneConfig {
            input: self.input.ok_or_else(|| missing("IN"))?,
            output: self.output.ok_or_else(|| missing("OUT"))?,
            sparsity: self.sparsity.ok_or_else(|| missing("--sparsity"))?,
            method: self.prune_method.into(),
            top_up,
            neuroal_step: self.neuroal_step.map_or(
                // Evo's search alone writes the model it scored (docs/methods.md §5.2).
                match top_up {
                    TopUp::Evo => NeuroalStep::Block,
                    _ => NeuroalStep::Both,
                },
                NeuroalStep::from,
            ),
            neuroal_lambdas: FixedLambdas {
                block: self.neuroal_block_lambda,
                row: self.neuroal_row_lambda,
            },
            nsamples: self.nsamples.unwrap_or(if self_generated {
                GENERATED_WINDOWS
            } else {
                TEXT_WINDOWS
            }),
            seqlen: self.seqlen.unwrap_or(if self_generated {
                GENERATED_SEQLEN
            } else {
                TEXT_SEQLEN
            }),
            seed: self.seed,
            sampling: Sampling {
                temperature: self.calib_temperature,
                top_p: self.calib_top_p,
            },
            calib: self.calib,
            calib_windows: self.calib_windows,
            tokenizer: self.tokenizer,
            eval_texts: self.eval_text,
            eval_windows: self.eval_windows,
            eval_seqlen: self.eval_seqlen,
            task_files: self.task_file,
            device: self.device.into(),
            ort_lib: self.ort_lib,
            nm: self.nm,
            reconstruct: self.reconstruct,
            owl_m: self.owl_m.unwrap_or(OWL_M),
            owl_lambda: self.owl_lambda.unwrap_or(OWL_LAMBDA),
            alpha_epsilon: self.alpha_epsilon.unwrap_or(ALPHA_EPSILON),
            dlp_alpha: self.dlp_alpha.unwrap_or(DLP_ALPHA),
            threads: self.threads,
            search_jobs: self.search_jobs,
            memory_budget: MemoryBudget::resolve(self.memory_budget),
            evo_generations: self.evo_generations.unwrap_or(EVO_GENERATIONS),
            evo_start: self.evo_start.map_or(EvoStart::Neuroal, EvoStart::from),
            evo_units: self.evo_units.map_or(EvoUnits::Block, EvoUnits::from),
            command_line,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::{evaluations, parse_nm, tasks_text, DeviceArg, MethodArg, StepArg, Task, TopUpArg};
    use clap::ValueEnum;
    use neuroal_onnx::allocate::{NeuroalStep, TopUp};
    use neuroal_onnx::device::Device;
    use neuroal_onnx::prune::PruneMethod;

    /// Every flag value converts to the library value of the same name.
    #[test]
    fn flag_values_name_their_library_values() {
        let name = |v: Option<clap::builder::PossibleValue>| v.unwrap().get_name().to_string();
        for v in MethodArg::value_variants() {
            assert_eq!(name(v.to_possible_value()), PruneMethod::from(*v).as_str());
        }
        for v in TopUpArg::value_variants() {
            assert_eq!(name(v.to_possible_value()), TopUp::from(*v).as_str());
        }
        for v in StepArg::value_variants() {
            assert_eq!(name(v.to_possible_value()), NeuroalStep::from(*v).as_str());
        }
        for v in DeviceArg::value_variants() {
            assert_eq!(name(v.to_possible_value()), Device::from(*v).as_str());
        }
    }

    #[test]
    fn nm_patterns() {
        assert_eq!(parse_nm("2:4"), Ok((2, 4)));
        for bad in ["2", "4:2", "0:4", "a:4", "2:0", "4:4"] {
            assert!(parse_nm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_lists_join_their_evaluations() {
        use Task::*;
        assert_eq!(evaluations(&[Lm]), (true, false));
        assert_eq!(evaluations(&[ZeroShot]), (false, true));
        assert_eq!(evaluations(&[Both]), (true, true));
        assert_eq!(evaluations(&[Lm, ZeroShot]), (true, true));
        assert_eq!(evaluations(&[None]), (false, false));
        assert_eq!(tasks_text(&[Lm, ZeroShot]), "lm,zero-shot");
    }
}
