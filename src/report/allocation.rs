//! What the allocations measured, for the report: OWL's and AlphaPruning's per-block values, and
//! NeuroAL's search (docs/methods.md §1.3–§1.5) with its candidates and where its time went.

use serde::Serialize;

/// What an allocation measured, per block, for the report.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "top_up", rename_all = "lowercase")]
pub enum AllocationDetail {
    /// OWL: each block's outlier ratio (%) and resulting sparsity.
    Owl {
        /// `--owl-m`.
        m: f64,
        /// `--owl-lambda`.
        lambda: f64,
        /// Per block, in order.
        outlier_ratio: Vec<f64>,
        /// Per block, in order.
        sparsity: Vec<f64>,
    },
    /// AlphaPruning: each block's mean α and the sparsity of its matrices.
    Alpha {
        /// `--alpha-epsilon`.
        epsilon: f64,
        /// Per block, in order.
        alpha: Vec<f64>,
        /// Per block, in order.
        sparsity: Vec<f64>,
    },
}

/// One evaluated candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// Its λ.
    pub lambda: f64,
    /// Σ of every linear's misalignment; lower is better.
    pub score: f64,
}

/// What the search tried and chose.
#[derive(Clone, Debug, Serialize)]
pub struct SearchReport {
    /// Block-step candidates, in grid order.
    pub block: Vec<Candidate>,
    /// The chosen block λ (none when the block step did not run).
    pub block_lambda: Option<f64>,
    /// Row-step candidates, in grid order.
    pub row: Vec<Candidate>,
    /// The chosen row λ (none when the row step did not run).
    pub row_lambda: Option<f64>,
    /// Why the row step did not run, when it did not.
    pub row_skipped: Option<String>,
    /// Windows each candidate ran on.
    pub windows: usize,
    /// Candidates evaluated at a time (`--search-jobs`, or as many as cores and memory allow).
    pub jobs: usize,
    /// Wall time of the search, seconds.
    pub seconds: f64,
    /// Where the candidate passes spent their time, summed over candidates (and over jobs run
    /// side by side, so it may exceed `seconds`).
    pub timings_s: SequentialTimings,
}

/// Where the time of sequential passes went, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SequentialTimings {
    /// ONNX Runtime: stage sessions, prefix and block runs (dense and pruned), with the channel
    /// sums when the stage models take them.
    pub forward: f64,
    /// Accumulating activation statistics on the host.
    pub statistics: f64,
    /// Scores, masks and weight updates.
    pub masks: f64,
}
