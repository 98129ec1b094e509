//! Scores and masks: pure functions over weight matrices in the canonical `[out, in]` layout.

mod mask;
mod score;

pub use mask::{neuron_prune_count, prune_mask, row_prune_count, MaskRule, RowMask};
pub use score::magnitude;

use serde::Serialize;

/// The base score that ranks weights (`--prune-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// |W|, per output row; needs no data.
    Magnitude,
    /// |W| · ‖X_j‖ (Sun et al. 2023).
    Wanda,
    /// Optimal-brain-surgeon reconstruction (Frantar & Alistarh 2023).
    Sparsegpt,
    /// |W| · row importance · column importance.
    Multiflow,
    /// Nothing pruned: the dense baseline, written and evaluated like a pruned model.
    Dense,
}

impl PruneMethod {
    /// Whether the method needs calibration activations.
    pub fn needs_calibration(self) -> bool {
        matches!(self, Self::Wanda | Self::Sparsegpt | Self::Multiflow)
    }
}
