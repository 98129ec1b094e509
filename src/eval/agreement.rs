//! How closely a pruned model's next-token distributions follow the dense model's on the same
//! windows: the mean KL divergence `KL(dense ‖ pruned)` and the top-1 agreement. Neither needs
//! labels, so both are measured on every evaluation text.

use ndarray::ArrayView2;
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
    /// Adds one window's logits, both `[positions, vocab]`.
    pub fn add(&mut self, dense: ArrayView2<f32>, pruned: ArrayView2<f32>) {
        for (p, q) in dense.rows().into_iter().zip(pruned.rows()) {
            let (p, q) = (
                p.as_slice()
                    .map(|s| s.to_vec())
                    .unwrap_or_else(|| p.to_vec()),
                q.as_slice()
                    .map(|s| s.to_vec())
                    .unwrap_or_else(|| q.to_vec()),
            );
            self.kl_sum += kl_divergence(&p, &q);
            self.same_top1 += usize::from(argmax(&p) == argmax(&q));
            self.positions += 1;
        }
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

/// `KL(softmax(p) ‖ softmax(q))` in nats, in f64.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter()
        .zip(&lq)
        .map(|(&a, &b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0)
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let log_sum = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - log_sum).collect()
}

/// Index of the largest value; the first one on ties.
fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn identical_logits_agree_fully() {
        let logits = array![[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.5]];
        let mut t = AgreementTally::default();
        t.add(logits.view(), logits.view());
        let a = t.finish();
        assert!(a.kl_divergence.abs() < 1e-12);
        assert_eq!((a.top1_agreement, a.positions), (1.0, 2));
    }

    #[test]
    fn kl_of_two_coins_matches_the_closed_form() {
        // softmax([0, ln 3]) = (1/4, 3/4); softmax([0, 0]) = (1/2, 1/2).
        let p = [0.0f32, 3f32.ln()];
        let q = [0.0f32, 0.0];
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-7);
        let mut t = AgreementTally::default();
        t.add(array![[0.0f32, 1.0]].view(), array![[1.0f32, 0.0]].view());
        assert_eq!(t.finish().top1_agreement, 0.0);
    }
}
