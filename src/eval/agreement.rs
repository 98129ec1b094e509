//! How closely a pruned model's next-token distributions follow the dense model's on the same
//! windows: the mean KL divergence `KL(dense ‖ pruned)` and the top-1 agreement. Neither needs
//! labels, so both are measured on every evaluation text.

use super::logits::WindowComparison;
use serde::Serialize;

/// Agreement of the pruned model with the dense one, over every position of every window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Agreement {
    /// Mean over positions of KL(dense ‖ pruned) between the two next-token distributions, in nats
    /// (0 when identical; lower is better).
    #[schemars(range(min = 0.0))]
    pub kl_divergence: f64,
    /// Fraction of positions where both models rank the same token first (higher is better).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top1_agreement: f64,
    /// Number of positions compared: every position of every window (windows × seqlen).
    pub positions: usize,
}

/// Accumulates [`Agreement`] one window at a time.
#[derive(Debug, Default)]
pub struct AgreementTally {
    kl_sum: f64,
    same_top1: usize,
    positions: usize,
}

impl AgreementTally {
    /// Adds one window's comparison ([`compare_window`](super::compare_window)).
    pub fn add(&mut self, window: &WindowComparison) {
        self.kl_sum += window.kl;
        self.same_top1 += window.same_top1;
        self.positions += window.positions;
    }

    /// The agreement so far.
    pub fn finish(&self) -> Agreement {
        let n = self.positions.max(1) as f64;
        Agreement {
            kl_divergence: self.kl_sum / n,
            top1_agreement: self.same_top1 as f64 / n,
            positions: self.positions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::compare_window;
    use ndarray::array;

    #[test]
    fn identical_logits_agree_fully() {
        let logits = array![[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.5]];
        let mut t = AgreementTally::default();
        t.add(&compare_window(logits.view(), logits.view(), &[1, 0]));
        let a = t.finish();
        assert_eq!(
            (a.kl_divergence, a.top1_agreement, a.positions),
            (0.0, 1.0, 2)
        );
    }

    #[test]
    fn means_are_taken_over_every_position_of_every_window() {
        let (dense, pruned) = (array![[0.0f32, 1.0]], array![[1.0f32, 0.0]]);
        let mut t = AgreementTally::default();
        let window = compare_window(dense.view(), pruned.view(), &[1]);
        t.add(&window);
        t.add(&compare_window(dense.view(), dense.view(), &[1]));
        let a = t.finish();
        assert_eq!((a.top1_agreement, a.positions), (0.5, 2));
        assert!((a.kl_divergence - window.kl / 2.0).abs() < 1e-15 && window.kl > 0.0);
    }
}
