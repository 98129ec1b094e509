//! What the allocations measured, for the report: OWL's and AlphaPruning's per-block values, and
//! NeuroAL's search (docs/methods.md §1.3–§1.5) with its candidates and where its time went.

use crate::allocate::evo::{EvoSettings, Generation};
use crate::allocate::EvoStart;
use serde::Serialize;

/// What an allocation measured, per block, for the report.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(tag = "top_up", rename_all = "lowercase")]
pub enum AllocationDetail {
    /// OWL: each block's outlier ratio (%) and resulting sparsity.
    Owl {
        /// Outlier threshold M (--owl-m): a Wanda score above M times the block's mean score is an
        /// outlier.
        m: f64,
        /// Sparsity spread λ (--owl-lambda): block sparsities range over about target ± λ.
        lambda: f64,
        /// Per block, in block order: the percentage (0 to 100) of the block's Wanda scores, from a
        /// dense pass over the calibration windows, that are outliers.
        #[schemars(inner(range(min = 0.0, max = 100.0)))]
        outlier_ratio: Vec<f64>,
        /// Per block, in block order: the sparsity given to every matrix of the block, a fraction
        /// clipped to [0.01, 0.99] (all equal to the target when the ratios are).
        #[schemars(inner(range(min = 0.0, max = 1.0)))]
        sparsity: Vec<f64>,
    },
    /// AlphaPruning: each block's mean α and the sparsity of its matrices.
    Alpha {
        /// Sparsity spread ε (--alpha-epsilon): the ratios to the target range over [1 − ε, 1 + ε]
        /// before the mean is restored.
        epsilon: f64,
        /// Per block, in block order: the mean over the block's matrices of the Hill estimate α of
        /// the tail of their squared singular values (dimensionless).
        alpha: Vec<f64>,
        /// Per block, in block order: the sparsity given to every matrix of the block, a fraction
        /// clipped to [0.01, 0.99]; the parameter-weighted mean is the target before clipping.
        #[schemars(inner(range(min = 0.0, max = 1.0)))]
        sparsity: Vec<f64>,
    },
    /// DLP: each block's mean Wanda score and resulting sparsity.
    Dlp {
        /// Sparsity spread α (--dlp-alpha): block sparsities range over about target ± α.
        alpha: f64,
        /// Per block, in block order: the mean over the block's weights of their Wanda score
        /// |W_ij|·‖X_j‖ from a dense pass over the calibration windows (‖X_j‖ the root mean over
        /// windows of the squared norm).
        #[schemars(inner(range(min = 0.0)))]
        mean_score: Vec<f64>,
        /// Per block, in block order: the sparsity given to every matrix of the block, a fraction
        /// clipped to [0.01, 0.99]; the higher the mean score, the higher the sparsity.
        #[schemars(inner(range(min = 0.0, max = 1.0)))]
        sparsity: Vec<f64>,
    },
    /// The evolutionary search: where it started, every generation, and the levels it chose.
    Evo {
        /// Where the search started (--evo-start): neuroal (NeuroAL's block step, whose candidates
        /// are in search) or uniform.
        start: EvoStart,
        /// How the search ran; generations is --evo-generations, seed is --seed.
        settings: EvoSettings,
        /// The units the search gave a level each, in block order (--evo-units): each block, or
        /// each block's attention matrices then its MLP's.
        units: Vec<EvoUnit>,
        /// Per unit, in the order of units: the sparsity the search started from.
        #[schemars(inner(range(min = 0.0, max = 1.0)))]
        start_sparsity: Vec<f64>,
        /// Per unit, in the order of units: the sparsity chosen, given to every row of the
        /// unit's matrices; the parameter-weighted mean stays the start's.
        #[schemars(inner(range(min = 0.0, max = 1.0)))]
        sparsity: Vec<f64>,
        /// The start's fitness: the mean over the final windows' tokens of KL(dense ‖ pruned) of
        /// the next-token distributions, nats per token, with every block's masks from the dense
        /// pass's statistics.
        #[schemars(range(min = 0.0))]
        start_fitness: f64,
        /// One entry per generation, in order.
        generations: Vec<Generation>,
        /// How many fitness evaluations ran on how many windows.
        evaluations: Vec<EvoEvaluations>,
        /// Windows run through the whole model (from a candidate's first block that differs
        /// from a kept run's), the dense model's included: a selection step runs a candidate
        /// only on the windows the step before did not score it on.
        window_runs: usize,
        /// Candidate windows run at a time, each job with its own ONNX Runtime sessions and a
        /// share of the cores: as NeuroAL's search jobs (--search-jobs). The search depends on
        /// it only through threads_per_job.
        #[schemars(range(min = 1.0))]
        jobs: usize,
        /// ONNX Runtime threads of each job (null when ONNX Runtime chose). Its float sums can
        /// change with it, and so can the search's fitness and choice.
        #[schemars(range(min = 1.0))]
        threads_per_job: Option<usize>,
        /// Wall time of the search after its start was known (the dense pass, the dense logits
        /// and the generations), seconds; NeuroAL's block step is in search.seconds.
        #[schemars(range(min = 0.0))]
        seconds: f64,
        /// Where the window runs (the dense model's included) and the masks took their time; the
        /// dense pass for the masks' statistics is not in it.
        // Boxed: inline, it would make every allocation's detail larger.
        timings_s: Box<EvoTimings>,
    },
}

/// Where the evolutionary search's time went, in seconds. The window runs' parts are summed over
/// the jobs, which run side by side: together they can exceed the wall time up to `jobs` times.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EvoTimings {
    /// ONNX Runtime: the runs of the embedding and the decoder blocks (each window run from its
    /// first block that differs from a kept run's), their sessions' opening included.
    #[schemars(range(min = 0.0))]
    pub blocks: f64,
    /// ONNX Runtime: the runs of the model's suffix (the final norm and the LM head, whose
    /// product grows with the vocabulary) on every window run, its session's opening included.
    #[schemars(range(min = 0.0))]
    pub head: f64,
    /// KL(dense ‖ pruned) of each window run's logits against the dense model's (a pass over
    /// both models' logits).
    #[schemars(range(min = 0.0))]
    pub fitness: f64,
    /// Masking the units' weights at the levels the candidates ask for, once per unit and level
    /// (between the window runs, not side by side with them).
    #[schemars(range(min = 0.0))]
    pub masks: f64,
}

impl EvoTimings {
    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: &EvoTimings) {
        self.blocks += other.blocks;
        self.head += other.head;
        self.fitness += other.fitness;
        self.masks += other.masks;
    }
}

/// Linears the evolutionary search gives one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EvoUnit {
    /// The decoder block.
    pub block: usize,
    /// Which of its matrices.
    pub matrices: Matrices,
}

/// A part of a block's prunable matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Matrices {
    /// Every one.
    All,
    /// The attention's projections.
    Attention,
    /// The MLP's.
    Mlp,
}

/// Fitness evaluations on one window count.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct EvoEvaluations {
    /// Calibration windows each evaluation ran on (the first ones).
    pub windows: usize,
    /// Evaluations.
    pub count: usize,
}

/// One evaluated candidate.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Candidate {
    /// The candidate's λ (the spread of block or row sparsity around the target).
    #[schemars(range(min = 0.0))]
    pub lambda: f64,
    /// Sum over every prunable linear of its neuron misalignment with the dense model (distance
    /// between the normalised input-channel norms, dense vs pruned); dimensionless, lower is
    /// better.
    #[schemars(range(min = 0.0))]
    pub score: f64,
}

/// What the search tried and chose.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SearchReport {
    /// Block-step candidates in grid order (λ from 0.01 to 0.25; 0.25 is left out at a target of
    /// 0.8 or more); empty with --neuroal-step row. With --neuroal-block-lambda, only the run at
    /// that λ whose alignment the row step reads (none with --neuroal-step block).
    pub block: Vec<Candidate>,
    /// The chosen block λ: the first candidate with the lowest score, or --neuroal-block-lambda;
    /// null when the block step did not run (--neuroal-step row).
    #[schemars(range(min = 0.0))]
    pub block_lambda: Option<f64>,
    /// Row-step candidates in grid order (λ from 0 to 0.25); empty when the row step did not run or
    /// --neuroal-row-lambda fixed its λ. With --top-up evo, the row step runs on the blocks at
    /// the levels the evolutionary search chose.
    pub row: Vec<Candidate>,
    /// The chosen row λ: the first candidate with the lowest score, or --neuroal-row-lambda; null
    /// when the row step did not run (--neuroal-step block, or see row_skipped).
    #[schemars(range(min = 0.0))]
    pub row_lambda: Option<f64>,
    /// Why the row step was skipped although asked for (SparseGPT takes one sparsity per matrix);
    /// null otherwise, including with --neuroal-step block.
    pub row_skipped: Option<String>,
    /// Number of calibration windows each candidate was pruned and scored on: the first
    /// min(--nsamples, 8).
    pub windows: usize,
    /// Candidates evaluated at a time, each with its own ONNX Runtime sessions and a share of the
    /// cores: --search-jobs, or by default one per core up to 4 while half of the available memory
    /// holds them. The candidates, scores and choice depend on it only through threads_per_job.
    #[schemars(range(min = 1.0))]
    pub jobs: usize,
    /// ONNX Runtime's intra-op threads per session of each job: the cores (--threads, else all)
    /// shared between the jobs, or with one job the run's own (onnx_runtime.threads; null when
    /// ONNX Runtime chose). ONNX Runtime's float sums can change with it, and so can the search's
    /// scores and choice.
    #[schemars(range(min = 1.0))]
    pub threads_per_job: Option<usize>,
    /// Wall time of the whole search, seconds (also timings_s.search).
    #[schemars(range(min = 0.0))]
    pub seconds: f64,
    /// Where the candidate passes spent their time, seconds summed over candidates, and over the
    /// candidates run side by side (--search-jobs), so the sum may exceed seconds.
    pub timings_s: SequentialTimings,
}

impl SearchReport {
    /// A search on `windows` windows that has tried nothing yet.
    pub fn new(windows: usize) -> Self {
        Self {
            block: Vec::new(),
            block_lambda: None,
            row: Vec::new(),
            row_lambda: None,
            row_skipped: None,
            windows,
            jobs: 1,
            threads_per_job: None,
            seconds: 0.0,
            timings_s: SequentialTimings::default(),
        }
    }
}

/// Where the time of sequential passes went, in seconds.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct SequentialTimings {
    /// ONNX Runtime: stage sessions, prefix and block runs (dense and pruned), with the channel
    /// sums when the stage models take them.
    #[schemars(range(min = 0.0))]
    pub forward: f64,
    /// Accumulating the linears' input statistics, dense and pruned (the alignment's norms).
    #[schemars(range(min = 0.0))]
    pub statistics: f64,
    /// Reading the dense weights, scores, masks and weight updates.
    #[schemars(range(min = 0.0))]
    pub masks: f64,
}

impl SequentialTimings {
    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: &SequentialTimings) {
        self.forward += other.forward;
        self.statistics += other.statistics;
        self.masks += other.masks;
    }
}
