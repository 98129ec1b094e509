//! Base scores: higher means more important (kept first). Matrices are row-major `[out, in]`.

use rayon::prelude::*;

/// Magnitude score |W_ij| of every weight.
pub fn magnitude(weights: &[f32]) -> Vec<f32> {
    weights.par_iter().map(|w| w.abs()).collect()
}

/// Wanda's score `|W_ij| · a_j` with `a` the input-channel norms (docs/methods.md §2.2).
pub fn wanda(weights: &[f32], norms: &[f32]) -> Vec<f32> {
    let cols = norms.len();
    weights
        .par_chunks_exact(cols)
        .flat_map_iter(|row| row.iter().zip(norms).map(|(w, a)| w.abs() * a))
        .collect()
}

/// Multiflow's score `|W_ij| · o_i · c_j` where, with `A = |W| · a`, `o_i` is the mean of row i
/// of A and `c_j` the mean of column j of A (docs/methods.md §2.4).
pub fn multiflow(weights: &[f32], norms: &[f32]) -> Vec<f32> {
    let cols = norms.len();
    let rows = weights.len() / cols;
    let a = wanda(weights, norms);
    let row_mean: Vec<f64> = a
        .chunks_exact(cols)
        .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() / cols as f64)
        .collect();
    let mut col_mean = vec![0.0f64; cols];
    for r in a.chunks_exact(cols) {
        for (c, &v) in col_mean.iter_mut().zip(r) {
            *c += v as f64;
        }
    }
    col_mean.iter_mut().for_each(|c| *c /= rows as f64);
    weights
        .chunks_exact(cols)
        .zip(&row_mean)
        .flat_map(|(row, o)| {
            row.iter()
                .zip(&col_mean)
                .map(move |(w, c)| (w.abs() as f64 * o * c) as f32)
        })
        .collect()
}

/// The exponent of the activation norm in RIA's score (the paper's `a`).
pub const RIA_EXPONENT: f32 = 0.5;

/// RIA's score `(|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · a_j^0.5`: the weight's share of its
/// row's and of its column's absolute sum, times the input-channel norm to the power
/// [`RIA_EXPONENT`] (docs/methods.md §2.5). A row or column of zeros contributes nothing.
pub fn ria(weights: &[f32], norms: &[f32]) -> Vec<f32> {
    let cols = norms.len();
    let share = |w: f32, total: f64| match total > 0.0 {
        true => w.abs() as f64 / total,
        false => 0.0,
    };
    let row_sum: Vec<f64> = weights
        .chunks_exact(cols)
        .map(|r| r.iter().map(|w| w.abs() as f64).sum())
        .collect();
    let mut col_sum = vec![0.0f64; cols];
    for r in weights.chunks_exact(cols) {
        for (c, w) in col_sum.iter_mut().zip(r) {
            *c += w.abs() as f64;
        }
    }
    weights
        .chunks_exact(cols)
        .zip(&row_sum)
        .flat_map(|(row, &o)| {
            row.iter()
                .zip(&col_sum)
                .zip(norms)
                .map(move |((&w, &c), &a)| {
                    ((share(w, o) + share(w, c)) * (a.powf(RIA_EXPONENT) as f64)) as f32
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_by_hand() {
        let w = [1.0f32, -2.0, 3.0, -4.0]; // [[1, -2], [3, -4]]
        let a = [2.0f32, 0.5];
        assert_eq!(wanda(&w, &a), vec![2.0, 1.0, 6.0, 2.0]);
        // A = [[2, 1], [6, 2]]; o = [1.5, 4]; c = [4, 1.5]
        assert_eq!(multiflow(&w, &a), vec![6.0, 4.5, 48.0, 24.0]);
        assert_eq!(magnitude(&w), vec![1.0, 2.0, 3.0, 4.0]);
        // Row sums [3, 7], column sums [4, 6]; √a = [√2, √0.5].
        let (r2, rh) = (2f64.sqrt(), 0.5f64.sqrt());
        let expected = [
            (1.0 / 3.0 + 1.0 / 4.0) * r2,
            (2.0 / 3.0 + 2.0 / 6.0) * rh,
            (3.0 / 7.0 + 3.0 / 4.0) * r2,
            (4.0 / 7.0 + 4.0 / 6.0) * rh,
        ];
        for (got, want) in ria(&w, &a).iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(
            ria(&[0.0, 0.0, 1.0, 0.0], &[1.0, 1.0]),
            vec![0.0, 0.0, 2.0, 0.0]
        );
    }
}
