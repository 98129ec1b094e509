//! DSnoT (Zhang et al. 2024; docs/methods.md §3.3): a training-free refinement of a mask. Each row swaps
//! pruned and kept weights, one pair per cycle, to drive the row's expected reconstruction error
//! `e_i = Σ_{j pruned} W_ij·μ_j` towards zero, for at most 50 cycles and while `|e_i| > 0.1`.

use super::mask::RowMask;
use rayon::prelude::*;

/// Cycles at most (`max_cycle_time`).
pub const MAX_CYCLES: usize = 50;
/// A row stops for good once its error is this small (`update_threshold`).
pub const THRESHOLD: f64 = 0.1;

/// Refines `mask` (true = pruned) of the row-major `[rows, cols]` `weights` in place. `scores`
/// order the candidates to prune (Wanda's scores in the reference), `mean` the per-channel input mean μ (summed over
/// tokens, averaged over windows, as the reference accumulates it) and `variance` the per-channel
/// input variance. The number pruned per row does not change.
pub fn refine(weights: &[f32], scores: &[f32], mean: &[f64], variance: &[f64], mask: &mut RowMask) {
    let cols = mask.cols;
    mask.pruned
        .par_chunks_mut(cols)
        .zip(weights.par_chunks(cols))
        .zip(scores.par_chunks(cols))
        .for_each(|((row_mask, w), s)| refine_row(w, s, mean, variance, row_mask, MAX_CYCLES));
}

fn refine_row(
    w: &[f32],
    score: &[f32],
    mean: &[f64],
    variance: &[f64],
    pruned: &mut [bool],
    cycles: usize,
) {
    let cols = w.len();
    let kept = pruned.iter().filter(|p| !**p).count();
    if kept == 0 || kept == cols {
        return;
    }
    // Contribution proxy φ_j = W_j·μ_j; the row's error is the contribution it lost.
    let phi: Vec<f64> = w.iter().zip(mean).map(|(&w, &m)| w as f64 * m).collect();
    let mut error: f64 = (0..cols).filter(|&j| pruned[j]).map(|j| phi[j]).sum();
    // Regrow candidates: φ/var over the row, kept weights at 0, ascending (stable).
    let regrow_key: Vec<f64> = (0..cols)
        .map(|j| {
            if pruned[j] {
                phi[j] / variance[j].max(f64::MIN_POSITIVE)
            } else {
                0.0
            }
        })
        .collect();
    let mut regrow: Vec<usize> = (0..cols).collect();
    regrow.sort_by(|&a, &b| regrow_key[a].total_cmp(&regrow_key[b]));
    // Prune candidates: kept weights with negative φ first by ascending score, then those with
    // positive φ by descending score; pruned weights last.
    let max_score = score.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) as f64 + 1.0;
    let prune_key: Vec<f64> = (0..cols)
        .map(|j| {
            if pruned[j] {
                f64::INFINITY
            } else if phi[j] > 0.0 {
                2.0 * max_score - score[j] as f64
            } else {
                score[j] as f64
            }
        })
        .collect();
    let mut prune: Vec<usize> = (0..cols).collect();
    prune.sort_by(|&a, &b| prune_key[a].total_cmp(&prune_key[b]));
    // Two cursors per list: the front moves forward, the back backward.
    let (mut regrow_front, mut regrow_back) = (0usize, cols - 1);
    let (mut prune_front, mut prune_back) = (0usize, kept - 1);
    for _ in 0..cycles {
        if error.abs() <= THRESHOLD {
            return; // sticky: the row is done
        }
        // e > 0: regrow the largest φ/var, prune the first candidate (a negative φ);
        // e < 0: regrow the smallest, prune the last (the positive φ with the lowest score).
        let positive = error > 0.0;
        let (grow, cut) = if positive {
            (regrow[regrow_back], prune[prune_front])
        } else {
            (regrow[regrow_front], prune[prune_back])
        };
        // The cursors can run past the pruned or the kept weights: then the row stops. (The
        // reference moves every row's cursors on every cycle, even for rows that have stopped,
        // and then prunes the kept weights a stopped row's regrow cursor reaches; that needs a
        // row with fewer than 50 pruned weights of one sign, which LLM-sized rows never have.)
        if !pruned[grow] || pruned[cut] {
            return;
        }
        pruned[grow] = false;
        pruned[cut] = true;
        error += phi[cut] - phi[grow];
        if positive {
            if regrow_back == 0 || prune_front + 1 >= kept {
                return;
            }
            regrow_back -= 1;
            prune_front += 1;
        } else {
            if prune_back == 0 || regrow_front + 1 >= cols {
                return;
            }
            regrow_front += 1;
            prune_back -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::{prune_mask, MaskRule};

    #[test]
    fn one_cycle_swaps_the_documented_pair() {
        // μ = 1, var = 1: φ = w. Pruned: 0.05, -0.2, -0.25 → e = −0.4 < 0, so the most negative
        // pruned weight (-0.25) comes back and the positive kept weight with the lowest score
        // (0.5) goes.
        let w = [0.5f32, -0.2, 0.05, -0.25, 1.0, 0.9];
        let score: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let mask = prune_mask(&score, 1, 6, &MaskRule::Row(0.5));
        assert_eq!(mask.pruned, [false, true, true, true, false, false]);
        let mut row = mask.pruned.clone();
        refine_row(&w, &score, &[1.0; 6], &[1.0; 6], &mut row, 1);
        assert_eq!(row, [true, true, true, false, false, false]);
    }

    #[test]
    fn small_errors_are_left_alone_and_budgets_never_change() {
        let w = [0.05f32, -0.04, 1.0, 2.0];
        let score: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let mut mask = prune_mask(&score, 1, 4, &MaskRule::Row(0.5));
        let before = mask.clone();
        refine(&w, &score, &[1.0; 4], &[1.0; 4], &mut mask);
        assert_eq!(mask, before, "|e| = 0.01 ≤ 0.1: nothing to do");

        let mut rng = crate::calib::Rng::new(3);
        let mut next = || (rng.unit() - 0.5) as f32;
        let (rows, cols) = (8, 64);
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let mean: Vec<f64> = (0..cols).map(|_| next() as f64 * 4.0).collect();
        let var: Vec<f64> = (0..cols).map(|_| 0.1 + next().abs() as f64).collect();
        let score: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let mut mask = prune_mask(&score, rows, cols, &MaskRule::Row(0.6));
        let initial = mask.clone();
        refine(&w, &score, &mean, &var, &mut mask);
        for (a, b) in mask.pruned.chunks(cols).zip(initial.pruned.chunks(cols)) {
            assert_eq!(
                a.iter().filter(|p| **p).count(),
                b.iter().filter(|p| **p).count()
            );
        }
        assert_ne!(mask, initial, "large errors make rows swap weights");
    }
}
