//! Perplexity over non-overlapping windows, in the convention of the reference (spec §4.1):
//! per window the mean next-token cross-entropy over `seqlen − 1` positions times `seqlen`, and
//! `PPL = exp(Σ / (windows · seqlen))`.

use crate::calib::consecutive_windows;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::runtime::CausalLm;
use ndarray::ArrayView2;
use serde::Serialize;

/// A perplexity measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    /// The perplexity.
    pub value: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens per window.
    pub seqlen: usize,
}

/// Sum over positions `0..seqlen-1` of `−log softmax(logits[t])[tokens[t+1]]`, accumulated in f64.
/// `logits` is `[seqlen, vocab]`.
pub fn window_nll(logits: ArrayView2<f32>, tokens: &[i64]) -> f64 {
    let mut total = 0.0f64;
    for t in 0..tokens.len().saturating_sub(1) {
        let row = logits.row(t);
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let target = tokens[t + 1] as usize;
        total += max + sum.ln() - row[target] as f64;
    }
    total
}

/// Perplexity of `lm` on `tokens`, cut into windows of `seqlen` (at most `max_windows`).
pub fn perplexity(
    lm: &mut CausalLm,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    progress: &Progress,
    label: &str,
) -> Result<Perplexity> {
    let windows = consecutive_windows(tokens, seqlen, max_windows);
    if windows.is_empty() || seqlen < 2 {
        return Err(Error::invalid(
            "--eval-text",
            format!(
                "{} tokens are not enough for one window of --seqlen {seqlen}",
                tokens.len()
            ),
        ));
    }
    let mut total = 0.0;
    for (i, window) in windows.iter().enumerate() {
        progress.item(label, i, windows.len());
        let ids: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let logits = lm.logits(&ids)?;
        if let Some(&bad) = window.iter().find(|&&t| t as usize >= logits.ncols()) {
            return Err(Error::invalid(
                "--tokenizer",
                format!(
                    "token id {bad} is outside the model's vocabulary of {}; the tokenizer does not belong to this model",
                    logits.ncols()
                ),
            ));
        }
        let nll = window_nll(logits.view(), &ids);
        // Mean over the seqlen − 1 predictions, weighted as seqlen (reference convention).
        total += nll / (seqlen - 1) as f64 * seqlen as f64;
    }
    progress.item(label, windows.len(), windows.len());
    let value = (total / (windows.len() * seqlen) as f64).exp();
    Ok(Perplexity {
        value,
        windows: windows.len(),
        seqlen,
    })
}

#[cfg(test)]
mod tests {
    use super::window_nll;
    use ndarray::array;

    #[test]
    fn uniform_logits_cost_log_vocab_per_prediction() {
        let logits = array![
            [0.0f32, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0],
            [5.0, 5.0, 5.0, 5.0]
        ];
        let nll = window_nll(logits.view(), &[0, 1, 2]);
        assert!((nll - 2.0 * 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn a_confident_right_guess_costs_almost_nothing_and_a_wrong_one_a_lot() {
        let logits = array![[0.0f32, 30.0], [0.0, 0.0]];
        assert!(window_nll(logits.view(), &[0, 1]) < 1e-9);
        assert!((window_nll(logits.view(), &[0, 0]) - 30.0).abs() < 1e-6);
    }
}
