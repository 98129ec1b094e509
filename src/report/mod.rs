//! The report a run leaves next to its output: what was done, to which files, and what it cost
//! in quality, as JSON for pipelines (`OUT.report.json`).

mod allocation;
mod deployment;
mod digest;
mod html;
mod schema;

pub use allocation::{
    AllocationDetail, Candidate, EvoEvaluations, EvoTimings, EvoUnit, Matrices, SearchReport,
    SequentialTimings,
};
pub use deployment::{deployment_info, CompressedSizes, ZSTD_LEVEL};
pub use digest::file_digests;
pub use html::render_html;
pub use schema::json_schema;

use crate::allocate::TopUp;
use crate::atomic::Job;
use crate::device::{Device, MemoryBudget};
use crate::error::Result;
use crate::eval::{Agreement, ChoiceAccuracy, Perplexity};
use crate::prune::PruneMethod;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the report's JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything a run reports: the report that a successful `neuroal-onnx` pruning run writes next
/// to its output model as OUT.report.json (for OUT.onnx), and prints on stdout with --json: what
/// was done, to which files, and what it cost in quality.
///
/// Every field is always present (only the stage entries of timings_s come and go); a field that
/// does not apply to the run is null (objects) or an empty list (lists). Paths are strings as
/// given on the command line unless a description says otherwise. Times are wall-clock seconds,
/// memory is MiB (2^20 bytes), sizes are bytes, KL divergence is in nats, and a fraction is a
/// number in [0, 1]. schema_version is bumped on any incompatible change; added fields keep it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Version of this JSON layout (the constant neuroal_onnx::report::SCHEMA_VERSION). It is
    /// bumped on any incompatible change (a field removed, renamed or changing type or meaning);
    /// fields added later keep the version.
    #[schemars(extend("const" = SCHEMA_VERSION))]
    pub schema_version: u32,
    /// Name of the program that wrote the report (the Cargo package name).
    #[schemars(extend("const" = "neuroal-onnx"))]
    pub tool: String,
    /// The program's version (the Cargo package version, semver).
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+"))]
    pub tool_version: String,
    /// The command line as given, program name first, one argument per element.
    pub command_line: Vec<String>,
    /// The ONNX Runtime that ran the model; null when the run needed none (no calibration data and
    /// no evaluation, e.g. --prune-method magnitude --top-up uniform without --eval-text).
    pub onnx_runtime: Option<RuntimeInfo>,
    /// The input model (never modified).
    pub input: InputInfo,
    /// The files written.
    pub output: OutputInfo,
    /// The method and its parameters.
    pub method: MethodInfo,
    /// The calibration windows the model was run on; null when the run needed none (--prune-method
    /// magnitude or dense with --top-up uniform or alpha).
    pub calibration: Option<CalibrationInfo>,
    /// What OWL (--top-up owl) or AlphaPruning (--top-up alpha) measured per block to allocate the
    /// sparsity; null for every other --top-up.
    pub allocation: Option<AllocationDetail>,
    /// NeuroAL's search (--top-up neuroal): every candidate λ with its score, the chosen λ of each
    /// step, the windows and the wall time; null for every other --top-up.
    pub search: Option<SearchReport>,
    /// Target and measured sparsity, over all prunable linears, per block and per matrix.
    pub sparsity: SparsityInfo,
    /// Perplexity of the input (dense) and output (pruned) model and their agreement, one entry per
    /// --eval-text in command-line order; empty without --eval-text or with --tasks zero-shot or
    /// none.
    pub evaluation: Vec<TextEvaluation>,
    /// Zero-shot multiple-choice accuracy of the input and output model, one entry per --task-file
    /// in command-line order; empty unless --tasks is zero-shot or both.
    pub zero_shot: Vec<TaskEvaluation>,
    /// What the zeros give a deployment: the size of the prunable weights and how well they
    /// compress with zstd before and after pruning.
    pub deployment: DeploymentInfo,
    /// Wall time of each stage that ran, in seconds, keyed by stage name. The stages are sequential
    /// except the prune_* entries and search, which are parts of prune.
    pub timings_s: BTreeMap<String, f64>,
    /// Peak resident memory of the process (Linux VmHWM) over the whole job, in MiB: the largest
    /// of stage_peak_rss_mib and the peak since the last stage ended; null where
    /// /proc/self/status cannot be read (outside Linux).
    #[schemars(range(min = 0.0))]
    pub peak_rss_mib: Option<f64>,
    /// Peak resident memory of each stage, in MiB, keyed by stage: prepare (loading, calibration
    /// windows), prune, write, measure_files and evaluate (when it ran). The kernel's high-water
    /// mark (VmHWM) is read at the end of each stage and reset for the next
    /// (/proc/self/clear_refs); empty where it cannot be reset.
    pub stage_peak_rss_mib: BTreeMap<String, f64>,
    /// The memory budget the job sized itself by and checked whole-model work against
    /// (--memory-budget, else the memory available when it started); null where neither is
    /// known (outside Linux).
    pub memory_budget: Option<MemoryBudget>,
}

/// The ONNX Runtime that ran the model.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RuntimeInfo {
    /// ONNX Runtime's version, read from the resolved library file name (libonnxruntime.so.1.32.0
    /// gives 1.32.0); null when the name carries none.
    pub version: Option<String>,
    /// The libonnxruntime file loaded (--ort-lib, else $ORT_DYLIB_PATH, else libonnxruntime.so
    /// beside the binary or in ../lib from it, else the build tree's
    /// .cache/ort/lib/libonnxruntime.so).
    pub library: PathBuf,
    /// The device the sessions ran on: cpu or cuda once a session has opened; the requested
    /// --device (possibly auto) if none ever opened.
    pub device: Device,
    /// Why --device auto ran on the CPU instead of CUDA, when it did; null otherwise.
    pub cuda_fallback: Option<String>,
    /// ONNX Runtime's intra-op threads per session (--threads); null when ONNX Runtime chose
    /// (one per physical core). Its float sums can change with this number: the same input,
    /// flags, library and threads give the same model, bit for bit.
    #[schemars(range(min = 1.0))]
    pub threads: Option<usize>,
}

/// The input model.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct InputInfo {
    /// The input model file, as given on the command line.
    pub model: PathBuf,
    /// Number of decoder blocks found (blocks with at least one prunable linear).
    pub blocks: usize,
    /// Number of prunable linear weight matrices found (the length of sparsity.per_matrix).
    pub prunable_linears: usize,
    /// Number of weights in the prunable linears (the denominator of sparsity.measured).
    pub prunable_params: usize,
    /// Number of weights deliberately left alone: token embeddings, the LM head, weights shared by
    /// several nodes, quantized weights, linears outside the decoder blocks, and weights stored or
    /// used in a way that is not rewritten (`neuroal-onnx inspect` lists them with the reason).
    pub excluded_weights: usize,
    /// The model file (as a canonical absolute path) first, then every external data file it
    /// references (absolute paths, in no fixed order), each with its size and SHA-256.
    pub files: Vec<FileDigest>,
}

/// A file and its SHA-256.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FileDigest {
    /// The file.
    pub path: PathBuf,
    /// The file's size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file's content, 64 lowercase hex digits.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// The files written.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct OutputInfo {
    /// The output model file, as given on the command line.
    pub model: PathBuf,
    /// The output's external data file (the model's file name with .data appended, e.g.
    /// out.onnx.data); null when no tensor was large enough (1 KiB) to go there and no data file
    /// was written.
    pub data_file: Option<PathBuf>,
    /// Number of tensors stored in data_file (0 when it is null).
    pub external_tensors: usize,
    /// The output model, then its data file when there is one, then the runtime files copied beside
    /// it from an onnxruntime-genai folder (genai_config.json, tokenizer files, chat template),
    /// each with its size and SHA-256 (paths as in model and data_file).
    #[schemars(length(min = 1))]
    pub files: Vec<FileDigest>,
}

/// The method and its parameters.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MethodInfo {
    /// The base score that ranks the weights (--prune-method): magnitude |W|; wanda |W|·‖X_j‖;
    /// sparsegpt (optimal-brain-surgeon reconstruction); multiflow |W|·row·column importance; ria
    /// relative importance · ‖X_j‖^0.5; dense prunes nothing (a baseline).
    pub prune_method: PruneMethod,
    /// How the global sparsity is distributed over blocks and rows (--top-up): uniform (every
    /// matrix gets the target), owl (outlier-weighted per block), alpha (AlphaPruning, heavy-tailed
    /// spectra per block), dsnot (uniform budgets, masks refined by DSnoT), neuroal
    /// (neuron-alignment search over block and row sparsity).
    pub top_up: TopUp,
    /// Target fraction of the prunable weights set to zero (--sparsity), in [0, 1).
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1))]
    pub sparsity: f64,
    /// N:M structured sparsity (--nm) as "N:M" (N of every M consecutive input weights zeroed, e.g.
    /// "2:4"); null when not asked for.
    #[schemars(regex(pattern = r"^[1-9][0-9]*:[1-9][0-9]*$"))]
    pub nm: Option<String>,
    /// Whether the kept weights were re-fitted to the dense outputs after masking (--reconstruct).
    pub reconstruct: bool,
    /// Seed of every random choice (--seed), such as which calibration windows are drawn or how the
    /// model samples its own.
    pub seed: u64,
    /// The parameters of the allocation in use, tagged with its name in their own top_up field;
    /// null for --top-up uniform.
    pub top_up_parameters: Option<TopUpParameters>,
}

/// The parameters of an allocation, as used.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "top_up")]
pub enum TopUpParameters {
    /// NeuroAL: which search steps ran, on how many of the calibration windows.
    Neuroal {
        /// The search steps asked for (--neuroal-step): block (block-wise λ only), row (row-wise λ
        /// only, on uniform blocks) or both (block, then row).
        step: crate::allocate::NeuroalStep,
        /// Number of calibration windows each search candidate is pruned and scored on:
        /// min(--nsamples, 8), as search.windows.
        search_windows: usize,
        /// The block λ given with --neuroal-block-lambda instead of searched (search.block then
        /// holds at most the one candidate run at it); null when searched.
        #[schemars(range(min = 0.0))]
        fixed_block_lambda: Option<f64>,
        /// The row λ given with --neuroal-row-lambda instead of searched (search.row is then
        /// empty); null when searched.
        #[schemars(range(min = 0.0))]
        fixed_row_lambda: Option<f64>,
    },
    /// DLP: spread `α`.
    Dlp {
        /// Sparsity spread α (--dlp-alpha), as allocation.alpha.
        alpha: f64,
    },
    /// The evolutionary search: where it starts and for how long.
    Evo {
        /// Where the search starts (--evo-start): neuroal (NeuroAL's block step) or uniform.
        start: crate::allocate::EvoStart,
        /// What gets a level of its own (--evo-units): block (each block) or group (each block's
        /// attention matrices and its MLP's apart), as allocation.units.
        units: crate::allocate::EvoUnits,
        /// Generations (--evo-generations), as allocation.settings.generations.
        generations: usize,
        /// Number of calibration windows NeuroAL's block step scores its candidates on, when it
        /// is the start, and its row step after the search: min(--nsamples, 8).
        search_windows: usize,
        /// What follows the search (--neuroal-step): both (NeuroAL's row step on the chosen
        /// blocks, search.row) or block (nothing: every row at its block's level).
        step: crate::allocate::NeuroalStep,
    },
    /// OWL: outlier threshold `M` and spread `λ`.
    Owl {
        /// Outlier threshold M (--owl-m), as allocation.m.
        m: f64,
        /// Sparsity spread λ (--owl-lambda), as allocation.lambda.
        lambda: f64,
    },
    /// AlphaPruning: spread `ε`.
    Alpha {
        /// Sparsity spread ε (--alpha-epsilon), as allocation.epsilon.
        epsilon: f64,
    },
    /// DSnoT: cycles at most and the error below which a row stops.
    Dsnot {
        /// Most refinement cycles per matrix row, each regrowing one pruned weight and pruning one
        /// kept weight (the reference's max_cycle_time).
        max_cycles: usize,
        /// A row stops refining for good once the absolute value of its error (Σ W_j·μ_j over its
        /// pruned weights, μ_j the input channel's mean as the reference accumulates it: summed
        /// over tokens, averaged over windows) is at most this (the reference's update_threshold).
        #[schemars(range(min = 0.0))]
        update_threshold: f64,
    },
}

/// The calibration data.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct CalibrationInfo {
    /// Where the windows came from: text (--calib text files through the tokenizer; also when text
    /// and .json files are mixed), token_ids (only .json files of token ids), windows
    /// (--calib-windows: used exactly as given, in order), self_generated (no calibration data:
    /// sampled from the model itself after its BOS token, with --seed).
    #[schemars(extend("enum" = ["text", "token_ids", "windows", "self_generated"]))]
    pub source: String,
    /// The --calib files (or the --calib-windows file), as given; empty for self_generated.
    pub files: Vec<PathBuf>,
    /// Number of documents the windows were drawn from (one per text file, one or more per .json
    /// file); 0 for self_generated.
    pub documents: usize,
    /// Number of calibration windows (--nsamples).
    pub windows: usize,
    /// Tokens per calibration window, window_prefix included: --seqlen, capped by the model's
    /// position tables and, for --calib, by the longest document's length minus one plus the
    /// prefix.
    pub seqlen: usize,
    /// The tokenizer's leading special tokens (Gemma's BOS) that start every window and count in
    /// its seqlen, as in evaluation.window_prefix; empty when the tokenizer adds none, and for
    /// windows (used as given).
    pub window_prefix: Vec<u32>,
    /// Where the per-window sums of the linears' input activations were taken: model (in the stage
    /// models, by ONNX Runtime, so the activations stay on its device: the default with CUDA) or
    /// host (from the whole activations, on the CPU: the default there);
    /// NEUROAL_ONNX_SUMS=model|host chooses. Both give the same sums in the same order on the CPU.
    #[schemars(extend("enum" = ["model", "host"]))]
    pub activation_sums: Option<String>,
    /// MiB of hidden states written to disk because the windows' hidden states did not fit their
    /// share of the memory budget (a quarter of memory_budget, split between the passes running
    /// at once): the largest spill file of any pass. 0 when they all stayed in memory. Spill files
    /// are made in the output's folder and unlinked at once.
    #[schemars(range(min = 0.0))]
    pub spilled_mib: f64,
    /// How self_generated windows were sampled (--calib-temperature, --calib-top-p); null for every
    /// other source.
    pub sampling: Option<crate::calib::Sampling>,
}

/// Target and measured sparsity.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SparsityInfo {
    /// The target fraction of prunable weights set to zero (--sparsity, as method.sparsity), in [0,
    /// 1).
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1))]
    pub target: f64,
    /// Fraction of the prunable weights that are exactly zero after pruning (zeros /
    /// input.prunable_params), in [0, 1]; weights that were already zero count.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub measured: f64,
    /// One entry per decoder block, in block order.
    pub per_block: Vec<BlockSparsity>,
    /// One entry per prunable linear, in discovery order (block by block).
    pub per_matrix: Vec<MatrixSparsity>,
}

/// One block's sparsity.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BlockSparsity {
    /// Block index: the N of layers.N (or h.N) in the model's node, initializer or scope names.
    pub block: usize,
    /// The allocation's target for the block: the mean of its matrices' targets weighted by their
    /// sizes, a fraction.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub target: f64,
    /// Fraction of the weights of the block's prunable linears that are zero after pruning.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub measured: f64,
}

/// One matrix's sparsity.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MatrixSparsity {
    /// Index of the block the matrix belongs to (as block_sparsity.block).
    pub block: usize,
    /// Module path below the block, e.g. self_attn.q_proj or mlp.down_proj.
    pub module: String,
    /// Name of the weight initializer in the ONNX graph.
    pub weight: String,
    /// [out_features, in_features] of the linear, whatever the stored layout.
    pub shape: [usize; 2],
    /// The matrix's target sparsity, the mean over its rows of their targets (0 with --prune-method
    /// dense), a fraction.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub target: f64,
    /// Fraction of the matrix's weights that are zero after pruning.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub measured: f64,
    /// When the matrix is stored with its inputs reordered (RIA with --nm, whose N:M groups follow
    /// a channel permutation): the int64 initializer holding the order. A Gather on the last axis
    /// reorders the linear's input with it, so the stored matrix is N:M in its own layout.
    pub input_order: Option<String>,
}

/// Quality on one held-out text.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TextEvaluation {
    /// The --eval-text file, as given.
    pub text: PathBuf,
    /// Number of tokens in the whole text as the tokenizer encodes it (without special tokens),
    /// before it is cut into windows.
    pub tokens: usize,
    /// Token ids at the start of every window, before its text: the special tokens the
    /// tokenizer's post-processor puts before a text (Gemma's BOS); empty when it adds none.
    /// Windows hold seqlen tokens in all, the prefix included.
    pub window_prefix: Vec<u32>,
    /// The input model's perplexity on the text.
    pub dense: Perplexity,
    /// The output model's perplexity on the same windows.
    pub pruned: Perplexity,
    /// How closely the output model's next-token distributions follow the input model's.
    pub agreement: Agreement,
}

/// Zero-shot multiple-choice accuracy on one task file.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TaskEvaluation {
    /// The --task-file (JSON lines of {"context", "choices", "gold"}), as given.
    pub task_file: PathBuf,
    /// Number of questions scored: every non-blank line of the file.
    pub items: usize,
    /// The input model's accuracy.
    pub dense: ChoiceAccuracy,
    /// The output model's accuracy.
    pub pruned: ChoiceAccuracy,
}

/// What pruning gives a deployment, stated plainly.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeploymentInfo {
    /// A plain-language note: zeros in dense tensors change neither file size nor latency by
    /// themselves; how they pay off (compression, sparse kernels, 2:4 on sparse tensor cores).
    pub note: String,
    /// Bytes of the prunable weights as stored in their own type (the same before and after
    /// pruning).
    pub prunable_weight_bytes: u64,
    /// The prunable weights before pruning, each matrix compressed with zstd on its own, bytes
    /// summed.
    pub zstd_dense_bytes: u64,
    /// The prunable weights after pruning, compressed the same way, bytes summed; compare with
    /// zstd_dense_bytes.
    pub zstd_pruned_bytes: u64,
    /// The zstd compression level used for both (zstd's default, 3).
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

/// Peak resident memory per stage of a job: the kernel's high-water mark read at the end of each
/// stage and reset for the next one (Linux's `/proc/self/clear_refs`).
pub struct StagePeaks {
    peaks: BTreeMap<String, f64>,
    /// Whether the mark was reset when the stage now running began.
    reset: bool,
}

impl StagePeaks {
    /// Resets the mark: the next stage starts now. Records nothing where it cannot be reset.
    pub fn start() -> Self {
        Self {
            peaks: BTreeMap::new(),
            reset: reset_peak_rss(),
        }
    }

    /// Records the peak since the last stage ended as `stage`'s, and resets the mark.
    pub fn end(&mut self, stage: &str) {
        if let (true, Some(peak)) = (self.reset, peak_rss_mib()) {
            self.peaks.insert(stage.to_string(), peak);
        }
        self.reset = reset_peak_rss();
    }

    /// Every stage's peak, and the job's: the largest of them and of the mark now.
    pub fn finish(self) -> (BTreeMap<String, f64>, Option<f64>) {
        let overall = self
            .peaks
            .values()
            .copied()
            .chain(peak_rss_mib())
            .reduce(f64::max);
        (self.peaks, overall)
    }
}

/// Resets the process's peak resident set size to its current size; false where that is not
/// possible (outside Linux).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
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
