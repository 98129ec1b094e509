//! The report a run leaves next to its output: what was done, to which files, and what it cost
//! in quality, as JSON for pipelines (`OUT.report.json`).

mod allocation;
mod deployment;
mod digest;
mod html;

pub use allocation::{AllocationDetail, Candidate, SearchReport, SequentialTimings};
pub use deployment::{deployment_info, CompressedSizes, ZSTD_LEVEL};
pub use digest::file_digests;
pub use html::render_html;

use crate::allocate::TopUp;
use crate::atomic::Job;
use crate::device::Device;
use crate::error::Result;
use crate::eval::{Agreement, ChoiceAccuracy, Perplexity};
use crate::prune::PruneMethod;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the report's JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `neuroal-onnx`.
    pub tool: String,
    /// The tool's version.
    pub tool_version: String,
    /// The command line as given.
    pub command_line: Vec<String>,
    /// ONNX Runtime, when it was used.
    pub onnx_runtime: Option<RuntimeInfo>,
    /// The input model.
    pub input: InputInfo,
    /// The files written.
    pub output: OutputInfo,
    /// The method and its parameters.
    pub method: MethodInfo,
    /// The calibration data, for the methods that use it.
    pub calibration: Option<CalibrationInfo>,
    /// What OWL or AlphaPruning measured to allocate (per-block outlier ratios or α).
    pub allocation: Option<AllocationDetail>,
    /// NeuroAL's search: every candidate λ with its score, the chosen λ, its wall time.
    pub search: Option<SearchReport>,
    /// Target and measured sparsity.
    pub sparsity: SparsityInfo,
    /// Perplexity and logit agreement per evaluation text.
    pub evaluation: Vec<TextEvaluation>,
    /// Zero-shot multiple-choice accuracy per task file (`--tasks zero-shot|both`).
    pub zero_shot: Vec<TaskEvaluation>,
    /// What the zeros give a deployment: file sizes and how well the weights compress.
    pub deployment: DeploymentInfo,
    /// Wall time of each stage, seconds.
    pub timings_s: BTreeMap<String, f64>,
    /// Peak resident memory of the process, MiB (Linux `VmHWM`), when known.
    pub peak_rss_mib: Option<f64>,
}

/// The ONNX Runtime that ran the model.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeInfo {
    /// Version, when known.
    pub version: Option<String>,
    /// The library file.
    pub library: PathBuf,
    /// The device sessions ran on.
    pub device: Device,
    /// Why `--device auto` did not use CUDA, when it did not.
    pub cuda_fallback: Option<String>,
}

/// The input model.
#[derive(Clone, Debug, Serialize)]
pub struct InputInfo {
    /// The model file.
    pub model: PathBuf,
    /// Decoder blocks found.
    pub blocks: usize,
    /// Prunable linears found.
    pub prunable_linears: usize,
    /// Weights in those linears.
    pub prunable_params: usize,
    /// Weights deliberately left alone.
    pub excluded_weights: usize,
    /// The model file and its external data files, with their SHA-256.
    pub files: Vec<FileDigest>,
}

/// A file and its SHA-256.
#[derive(Clone, Debug, Serialize)]
pub struct FileDigest {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its content, lowercase hex.
    pub sha256: String,
}

/// The files written.
#[derive(Clone, Debug, Serialize)]
pub struct OutputInfo {
    /// The pruned model.
    pub model: PathBuf,
    /// Its external data file.
    pub data_file: Option<PathBuf>,
    /// Tensors stored in the data file.
    pub external_tensors: usize,
    /// The files written, with their SHA-256.
    pub files: Vec<FileDigest>,
}

/// The method and its parameters.
#[derive(Clone, Debug, Serialize)]
pub struct MethodInfo {
    /// Base score.
    pub prune_method: PruneMethod,
    /// Allocation.
    pub top_up: TopUp,
    /// Target fraction of prunable weights set to zero.
    pub sparsity: f64,
    /// N:M structured sparsity, when asked for (`"2:4"`).
    pub nm: Option<String>,
    /// Seed of every random choice.
    pub seed: u64,
    /// The parameters of the allocation in use (`null` for `uniform`).
    pub top_up_parameters: Option<TopUpParameters>,
}

/// The parameters of an allocation, as used.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "top_up")]
pub enum TopUpParameters {
    /// NeuroAL: which search steps ran, on how many of the calibration windows.
    Neuroal {
        /// `block`, `row` or `both`.
        step: crate::allocate::NeuroalStep,
        /// Calibration windows each candidate runs on.
        search_windows: usize,
        /// `--neuroal-block-lambda`: the block λ given instead of searched.
        fixed_block_lambda: Option<f64>,
        /// `--neuroal-row-lambda`: the row λ given instead of searched.
        fixed_row_lambda: Option<f64>,
    },
    /// OWL: outlier threshold `M` and spread `λ`.
    Owl {
        /// `--owl-m`.
        m: f64,
        /// `--owl-lambda`.
        lambda: f64,
    },
    /// AlphaPruning: spread `ε`.
    Alpha {
        /// `--alpha-epsilon`.
        epsilon: f64,
    },
    /// DSnoT: cycles at most and the error below which a row stops.
    Dsnot {
        /// Cycles at most.
        max_cycles: usize,
        /// `|e|` threshold.
        update_threshold: f64,
    },
}

/// The calibration data.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationInfo {
    /// `text` (through the tokenizer), `token_ids` (`.json` files), `windows`
    /// (`--calib-windows`, used as given) or `self_generated` (sampled from the model itself,
    /// written after its BOS token, when no calibration data is given).
    pub source: String,
    /// The `--calib` files.
    pub files: Vec<PathBuf>,
    /// Documents the windows were drawn from.
    pub documents: usize,
    /// Windows drawn (`--nsamples`).
    pub windows: usize,
    /// Tokens per window.
    pub seqlen: usize,
    /// Where the linears' input activations were summed per window: `model` (in the stage
    /// models, by ONNX Runtime: the default with CUDA) or `host` (the default on the CPU).
    pub activation_sums: Option<String>,
    /// How self-generated windows were sampled; `None` for every other source.
    pub sampling: Option<crate::calib::Sampling>,
}

/// Target and measured sparsity.
#[derive(Clone, Debug, Serialize)]
pub struct SparsityInfo {
    /// The target.
    pub target: f64,
    /// Zeros / weights over all prunable linears after pruning.
    pub measured: f64,
    /// Per block.
    pub per_block: Vec<BlockSparsity>,
    /// Per matrix.
    pub per_matrix: Vec<MatrixSparsity>,
}

/// One block's sparsity.
#[derive(Clone, Debug, Serialize)]
pub struct BlockSparsity {
    /// Block index.
    pub block: usize,
    /// The allocation's target for the block (weighted mean over its linears).
    pub target: f64,
    /// Zeros / weights in the block's linears.
    pub measured: f64,
}

/// One matrix's sparsity.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixSparsity {
    /// Block index.
    pub block: usize,
    /// Module path below the block.
    pub module: String,
    /// The weight initializer.
    pub weight: String,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// Mean target over rows.
    pub target: f64,
    /// Zeros / weights after pruning.
    pub measured: f64,
}

/// Quality on one held-out text.
#[derive(Clone, Debug, Serialize)]
pub struct TextEvaluation {
    /// The text file.
    pub text: PathBuf,
    /// Tokens in the text.
    pub tokens: usize,
    /// The input model's perplexity.
    pub dense: Perplexity,
    /// The output model's perplexity.
    pub pruned: Perplexity,
    /// How closely the output model's next-token distributions follow the input model's.
    pub agreement: Agreement,
}

/// Zero-shot multiple-choice accuracy on one task file.
#[derive(Clone, Debug, Serialize)]
pub struct TaskEvaluation {
    /// The task file.
    pub task_file: PathBuf,
    /// Questions scored.
    pub items: usize,
    /// The input model's accuracy.
    pub dense: ChoiceAccuracy,
    /// The output model's accuracy.
    pub pruned: ChoiceAccuracy,
}

/// What pruning gives a deployment, stated plainly.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentInfo {
    /// Zeros stored in dense tensors change neither file size nor latency by themselves.
    pub note: String,
    /// Bytes of the prunable weights as stored (the same before and after pruning).
    pub prunable_weight_bytes: u64,
    /// Those bytes compressed with zstd, before pruning.
    pub zstd_dense_bytes: u64,
    /// Those bytes compressed with zstd, after pruning.
    pub zstd_pruned_bytes: u64,
    /// The zstd level used.
    pub zstd_level: i32,
}

impl Report {
    /// Serialises the report as pretty JSON (non-finite numbers become `null`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| {
            crate::Error::internal(format!("the report cannot be written as JSON: {e}"))
        })
    }

    /// Writes the report as JSON to `path`, atomically, as an output of `job`.
    pub fn write_json(&self, path: &Path, job: &Job) -> Result<()> {
        let mut text = self.to_json()?;
        text.push('\n');
        job.write(path, text.as_bytes())
    }

    /// Writes the report as a self-contained HTML page to `path`, atomically, as an output of
    /// `job`.
    pub fn write_html(&self, path: &Path, job: &Job) -> Result<()> {
        job.write(path, render_html(self).as_bytes())
    }
}

/// The process's peak resident set size in MiB, from `/proc/self/status` (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `OUT.report.json` for output model `OUT.onnx`.
pub fn report_path(output: &Path) -> PathBuf {
    output.with_extension("report.json")
}

/// `OUT.report.html` for output model `OUT.onnx`.
pub fn html_report_path(output: &Path) -> PathBuf {
    output.with_extension("report.html")
}
