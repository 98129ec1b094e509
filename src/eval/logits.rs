//! Softmax statistics of logit rows: the one place the evaluation exponentiates a vocabulary.
//!
//! A 262k-token vocabulary (Gemma 3) makes this the evaluation's hot loop: every position of
//! every window needs `log Σ exp` of both models' logits and `KL(dense ‖ pruned)`. Each row is
//! read twice (its maximum, then one fused pass that sums the exponentials and the KL terms), the
//! exponential is a branch-free polynomial that the compiler vectorizes, sums are kept in f64
//! lanes, and the rows of a window run in parallel (docs/methods.md §4.1, "Evaluation
//! arithmetic").

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;
use std::borrow::Cow;

/// `e^x` for `x ≤ 0` in f32, relative error below 3·10⁻⁷ down to `x = −87` (about 10⁻³⁸, where
/// f32 leaves its normal range) and that tiny value below. NaN stays NaN.
///
/// `e^x = 2^k · e^r` with `k = round(x / ln 2)` and `|r| ≤ ln 2 / 2`, `e^r` by its Taylor
/// polynomial of degree 7 (truncation below 10⁻⁸). Rounding adds and subtracts 1.5·2²³, which
/// also leaves `k` in the low bits of the sum, so there is no branch and no conversion call.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split so that k · LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let k = shifted - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // The low bits of `shifted` hold k (−126 ≤ k ≤ 0 here); 2^k as an f32 exponent field.
    let k_int = shifted.to_bits() as i32 - SHIFTER.to_bits() as i32;
    p * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// Lanes of the vectorized sums: independent accumulators, so that the compiler can keep them in
/// vector registers (a single f64 sum would force one add after another).
const LANES: usize = 8;

/// The largest value of `row` and the index of its first occurrence (NaN is never the largest).
fn max_and_argmax(row: &[f32]) -> (f32, usize) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (max, row.iter().position(|&v| v == max).unwrap_or(0))
}

/// `Σ e^(v − max)` over `row`, in f64.
fn sum_exp(row: &[f32], max: f32) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += exp_nonpositive(v - max) as f64;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_nonpositive(v - max) as f64)
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// `log Σ_v e^(row[v])`, in f64: the log-normalizer of the row's softmax.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let (max, _) = max_and_argmax(row);
    max as f64 + sum_exp(row, max).ln()
}

/// What the evaluation needs from one position's dense logits `p` and pruned logits `q`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RowComparison {
    /// `log Σ e^p`.
    pub dense_log_sum_exp: f64,
    /// `log Σ e^q`.
    pub pruned_log_sum_exp: f64,
    /// `KL(softmax(p) ‖ softmax(q))` in nats (clamped at 0 against rounding).
    pub kl: f64,
    /// Whether both rows rank the same token first (the first index of the maximum).
    pub same_top1: bool,
}

/// Compares one position's dense and pruned logits (rows of the same length) in two passes.
///
/// With `p' = p − max p`, `q' = q − max q`, `S_p = Σ e^p'` and `S_q = Σ e^q'`,
/// `KL = (Σ e^p' · (p' − q')) / S_p − ln S_p + ln S_q`: one pass gives all three sums.
fn compare_rows(p: &[f32], q: &[f32]) -> RowComparison {
    debug_assert_eq!(p.len(), q.len());
    let ((max_p, top_p), (max_q, top_q)) = (max_and_argmax(p), max_and_argmax(q));
    let (mut sum_p, mut sum_q, mut cross) = ([0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let (mut chunks_p, mut chunks_q) = (p.chunks_exact(LANES), q.chunks_exact(LANES));
    let mut add = |lane: usize, a: f32, b: f32| {
        let (a, b) = (a - max_p, b - max_q);
        let e = exp_nonpositive(a);
        sum_p[lane] += e as f64;
        sum_q[lane] += exp_nonpositive(b) as f64;
        cross[lane] += (e * (a - b)) as f64;
    };
    for (cp, cq) in (&mut chunks_p).zip(&mut chunks_q) {
        for lane in 0..LANES {
            add(lane, cp[lane], cq[lane]);
        }
    }
    for (&a, &b) in chunks_p.remainder().iter().zip(chunks_q.remainder()) {
        add(0, a, b);
    }
    let (s_p, s_q, c) = (
        sum_p.iter().sum::<f64>(),
        sum_q.iter().sum::<f64>(),
        cross.iter().sum::<f64>(),
    );
    let kl = c / s_p - s_p.ln() + s_q.ln();
    RowComparison {
        dense_log_sum_exp: max_p as f64 + s_p.ln(),
        pruned_log_sum_exp: max_q as f64 + s_q.ln(),
        kl: if kl.is_nan() { kl } else { kl.max(0.0) },
        same_top1: top_p == top_q,
    }
}

/// `KL(softmax(p) ‖ softmax(q))` in nats.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    compare_rows(p, q).kl
}

/// One window of the dense and the pruned model, summed over its positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowComparison {
    /// `Σ_t −log softmax(dense[t])[ids[t+1]]` over the `seqlen − 1` predictions.
    pub dense_nll: f64,
    /// The same for the pruned logits.
    pub pruned_nll: f64,
    /// `Σ_t KL(dense[t] ‖ pruned[t])` over every position (the last one included).
    pub kl: f64,
    /// Positions where both models rank the same token first.
    pub same_top1: usize,
    /// Positions compared (the window's length).
    pub positions: usize,
}

/// Compares one window's `[positions, vocab]` dense and pruned logits, positions in parallel;
/// `ids` are the window's tokens (the next one is each position's target). Positions are summed
/// in order, so the result does not depend on the number of threads.
pub fn compare_window(
    dense: ArrayView2<f32>,
    pruned: ArrayView2<f32>,
    ids: &[i64],
) -> WindowComparison {
    debug_assert_eq!(dense.dim(), pruned.dim());
    let rows: Vec<WindowComparison> = (0..dense.nrows())
        .into_par_iter()
        .map(|t| {
            let (p, q) = (contiguous_row(dense, t), contiguous_row(pruned, t));
            let row = compare_rows(&p, &q);
            let (dense_nll, pruned_nll) = match ids.get(t + 1) {
                Some(&next) => (
                    row.dense_log_sum_exp - p[next as usize] as f64,
                    row.pruned_log_sum_exp - q[next as usize] as f64,
                ),
                None => (0.0, 0.0),
            };
            WindowComparison {
                dense_nll,
                pruned_nll,
                kl: row.kl,
                same_top1: usize::from(row.same_top1),
                positions: 1,
            }
        })
        .collect();
    rows.iter()
        .fold(WindowComparison::default(), |a, b| WindowComparison {
            dense_nll: a.dense_nll + b.dense_nll,
            pruned_nll: a.pruned_nll + b.pruned_nll,
            kl: a.kl + b.kl,
            same_top1: a.same_top1 + b.same_top1,
            positions: a.positions + b.positions,
        })
}

/// Row `t` of `logits` as a slice (borrowed: logits come in standard layout).
pub(crate) fn contiguous_row(logits: ArrayView2<'_, f32>, t: usize) -> Cow<'_, [f32]> {
    let row = logits.index_axis_move(Axis(0), t);
    match row.to_slice() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(row.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_polynomial_exponential_matches_f64_exp_over_its_range() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max((exp_nonpositive(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert!(exp_nonpositive(-1000.0) < 2e-38);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    /// The textbook definitions, in f64, one exponential per term.
    fn naive_log_softmax(x: &[f32]) -> Vec<f64> {
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        x.iter().map(|&v| v as f64 - lse).collect()
    }

    #[test]
    fn fused_row_statistics_match_the_textbook_formulas() {
        let mut rng = crate::calib::Rng::new(7);
        // Odd length, so that the tail after the lanes is exercised.
        let p: Vec<f32> = (0..50_001)
            .map(|_| (rng.unit() * 30.0 - 15.0) as f32)
            .collect();
        let q: Vec<f32> = p
            .iter()
            .map(|&v| v + (rng.unit() * 2.0 - 1.0) as f32)
            .collect();
        let (lp, lq) = (naive_log_softmax(&p), naive_log_softmax(&q));
        let want_kl: f64 = lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum();
        let row = compare_rows(&p, &q);
        assert!(
            (row.kl - want_kl).abs() < 1e-5 * want_kl,
            "{row:?} vs {want_kl}"
        );
        assert!((row.dense_log_sum_exp - (p[0] as f64 - lp[0])).abs() < 1e-5);
        assert!((row.pruned_log_sum_exp - (q[0] as f64 - lq[0])).abs() < 1e-5);
        assert!((log_sum_exp(&p) - row.dense_log_sum_exp).abs() < 1e-9);
        assert_eq!(
            compare_rows(&p, &p).kl,
            0.0,
            "a row agrees exactly with itself"
        );
    }

    #[test]
    fn kl_of_two_coins_matches_the_closed_form() {
        // softmax([0, ln 3]) = (1/4, 3/4); softmax([0, 0]) = (1/2, 1/2).
        let p = [0.0f32, 3f32.ln()];
        let q = [0.0f32, 0.0];
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-7);
        assert!(!compare_rows(&[0.0, 1.0], &[1.0, 0.0]).same_top1);
    }

    #[test]
    fn a_window_sums_the_losses_of_its_predictions_and_compares_every_position() {
        let dense = array![[0.0f32, 30.0], [0.0, 0.0], [1.0, 0.0]];
        let pruned = array![[0.0f32, 0.0], [0.0, 0.0], [0.0, 1.0]];
        let w = compare_window(dense.view(), pruned.view(), &[0, 1, 0]);
        // Dense: a confident right guess, then a coin; pruned: two coins.
        assert!((w.dense_nll - 2f64.ln()).abs() < 1e-6, "{w:?}");
        assert!((w.pruned_nll - 2.0 * 2f64.ln()).abs() < 1e-9, "{w:?}");
        assert_eq!((w.positions, w.same_top1), (3, 1));
        let naive = |a: &[f32], b: &[f32]| {
            let (la, lb) = (naive_log_softmax(a), naive_log_softmax(b));
            la.iter()
                .zip(&lb)
                .map(|(&x, &y)| x.exp() * (x - y))
                .sum::<f64>()
        };
        let want = naive(&[0.0, 30.0], &[0.0, 0.0]) + naive(&[1.0, 0.0], &[0.0, 1.0]);
        assert!((w.kl - want).abs() < 1e-6, "{} vs {want}", w.kl);
    }
}
