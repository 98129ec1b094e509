//! Statistics of a linear's input activations, accumulated one calibration window at a time so
//! that full activations are never held for more than one window.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows of the Gram matrix computed together by one task.
const GRAM_BAND: usize = 64;

/// Per-input-channel statistics of the activations `X` (`[tokens, channels]`) a linear reads.
#[derive(Clone, Debug)]
pub struct ActivationStats {
    /// Input channels (the linear's `in_features`).
    pub channels: usize,
    /// Windows added.
    pub samples: usize,
    /// Tokens added.
    pub tokens: usize,
    /// Σ x² per channel over all tokens (f64).
    pub sumsq: Vec<f64>,
    /// Σ x per channel over all tokens (f64).
    pub sum: Vec<f64>,
    /// Σ over windows of (Σ_window x)² / tokens_in_window per channel: the part of Σ x² that the
    /// windows' own means explain, so that variances can be taken within windows.
    pub window_sq_means: Vec<f64>,
    /// Σ XᵀX, `[channels, channels]` row-major, when requested (SparseGPT).
    pub gram: Option<Vec<f64>>,
}

impl ActivationStats {
    /// Empty statistics; `with_gram` also accumulates XᵀX.
    pub fn new(channels: usize, with_gram: bool) -> Self {
        Self {
            channels,
            samples: 0,
            tokens: 0,
            sumsq: vec![0.0; channels],
            sum: vec![0.0; channels],
            window_sq_means: vec![0.0; channels],
            gram: with_gram.then(|| vec![0.0; channels * channels]),
        }
    }

    /// Adds one window's per-channel sums over its `tokens` tokens: Σ x² and Σ x (as
    /// [`ChannelSums`](super::ChannelSums) takes them in the stage model).
    pub fn add_window(&mut self, sumsq: &[f64], sum: &[f64], tokens: usize) {
        assert!(
            sumsq.len() == self.channels && sum.len() == self.channels,
            "window sums must have one entry per channel"
        );
        for (total, s) in self.sumsq.iter_mut().zip(sumsq) {
            *total += s;
        }
        if tokens > 0 {
            for ((total, sq_mean), s) in self.sum.iter_mut().zip(&mut self.window_sq_means).zip(sum)
            {
                *total += s;
                *sq_mean += s * s / tokens as f64;
            }
        }
        self.samples += 1;
        self.tokens += tokens;
    }

    /// Adds one window's XᵀX (the activations row-major `[tokens, channels]`) to the Gram matrix;
    /// does nothing when it is not accumulated.
    pub fn add_gram(&mut self, x: &[f32]) {
        let Some(gram) = &mut self.gram else { return };
        let channels = self.channels;
        let tokens = x.len() / channels;
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let xm = MatRef::from_row_major_slice(&x64, tokens, channels);
        // Bands of rows of a fixed height, each a sequential product, in parallel: every entry's
        // sum is taken in the same order whatever the thread count.
        gram.par_chunks_mut(GRAM_BAND * channels)
            .enumerate()
            .for_each(|(band, rows)| {
                let first = band * GRAM_BAND;
                let height = rows.len() / channels;
                let g = MatMut::from_row_major_slice_mut(rows, height, channels);
                let lhs = xm.submatrix(0, first, tokens, height).transpose();
                matmul(g, Accum::Add, lhs, xm, 1.0, Par::Seq);
            });
    }

    /// Adds one window's activations, row-major `[tokens, channels]`: the window's sums taken on
    /// the host in the stage model's order (row after row), then [`Self::add_window`] and
    /// [`Self::add_gram`].
    pub fn add(&mut self, x: &[f32]) {
        assert_eq!(
            x.len() % self.channels,
            0,
            "activations must be [tokens, channels]"
        );
        let mut sumsq = vec![0.0f64; self.channels];
        let mut sum = vec![0.0f64; self.channels];
        for row in x.chunks_exact(self.channels) {
            for ((sq, s), &v) in sumsq.iter_mut().zip(&mut sum).zip(row) {
                let v = v as f64;
                *sq += v * v;
                *s += v;
            }
        }
        self.add_window(&sumsq, &sum, x.len() / self.channels);
        self.add_gram(x);
    }

    /// Wanda's input-channel norms `a_j = sqrt(Σ x² / windows)` (docs/methods.md §0.2).
    pub fn norms(&self) -> Vec<f32> {
        let n = self.samples.max(1) as f64;
        self.sumsq.iter().map(|s| (s / n).sqrt() as f32).collect()
    }

    /// Per-channel Σ x over a window's tokens, averaged over windows (DSnoT's μ).
    pub fn window_mean(&self) -> Vec<f64> {
        let n = self.samples.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Per-channel variance within windows, averaged over windows weighted by their tokens
    /// (DSnoT's `var`, which the reference takes per window with `unbiased=False` and then
    /// averages): `(Σ x² − Σ_w (Σ_w x)² / T_w) / T`.
    pub fn variance(&self) -> Vec<f64> {
        let t = self.tokens.max(1) as f64;
        self.sumsq
            .iter()
            .zip(&self.window_sq_means)
            .map(|(q, m)| ((q - m) / t).max(0.0))
            .collect()
    }

    /// SparseGPT's Hessian `H = (2 / windows) Σ XᵀX` (docs/methods.md §2.3), row-major.
    pub fn hessian(&self) -> Option<Vec<f64>> {
        let scale = 2.0 / self.samples.max(1) as f64;
        self.gram
            .as_ref()
            .map(|g| g.iter().map(|v| v * scale).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::ActivationStats;

    #[test]
    fn sums_norms_and_gram_of_two_windows() {
        let mut s = ActivationStats::new(2, true);
        s.add(&[1.0, 2.0, 3.0, 4.0]); // tokens (1,2), (3,4)
        s.add(&[0.0, 1.0]);
        assert_eq!((s.samples, s.tokens), (2, 3));
        assert_eq!(s.sumsq, vec![10.0, 21.0]);
        assert_eq!(s.sum, vec![4.0, 7.0]);
        // XᵀX = [[1+9+0, 2+12+0], [2+12+0, 4+16+1]]
        assert_eq!(s.gram.as_deref(), Some(&[10.0, 14.0, 14.0, 21.0][..]));
        assert_eq!(s.hessian().unwrap(), vec![10.0, 14.0, 14.0, 21.0]); // 2/2 = 1
        assert_eq!(
            s.norms(),
            vec![(5.0f64).sqrt() as f32, (10.5f64).sqrt() as f32]
        );
        assert_eq!(s.window_mean(), vec![2.0, 3.5]);
        // Within windows: (1, 3) and (2, 4) have variance 1 over 2 tokens, a lone token 0;
        // weighted by tokens, 2/3. The variance over all tokens would be 14/9 for channel 0.
        for v in s.variance() {
            assert!((v - 2.0 / 3.0).abs() < 1e-12, "{v}");
        }
    }
}
