//! Perplexity over non-overlapping windows, in the convention of the reference (docs/methods.md §4.1):
//! per window the mean next-token cross-entropy over `seqlen − 1` positions times `seqlen`, and
//! `PPL = exp(Σ / (windows · seqlen))`.

use super::logits::{contiguous_row, log_sum_exp};
use crate::calib::consecutive_windows;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::runtime::CausalLm;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::Serialize;

/// A perplexity measurement.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Perplexity {
    /// The perplexity (dimensionless, at least 1; lower is better): exp of the mean next-token
    /// cross-entropy in nats, in the reference's convention (each window's mean over its seqlen − 1
    /// predictions, weighted by seqlen). null when it overflows a double (a model pruned so far
    /// that some window's cross-entropy is unbounded).
    #[schemars(range(min = 1.0), extend("type" = ["number", "null"]))]
    pub perplexity: f64,
    /// Number of windows evaluated (all that fit in the text, at most --eval-windows).
    pub windows: usize,
    /// Tokens per window: --seqlen, capped by the model's position tables and by the text's length.
    pub seqlen: usize,
}

/// Sum over positions `0..seqlen-1` of `−log softmax(logits[t])[tokens[t+1]]`, accumulated in f64.
/// `logits` is `[seqlen, vocab]`. Positions run in parallel and are summed in order, so the sum
/// does not depend on the number of threads.
pub fn window_nll(logits: ArrayView2<f32>, tokens: &[i64]) -> f64 {
    let losses: Vec<f64> = (0..tokens.len().saturating_sub(1))
        .into_par_iter()
        .map(|t| {
            let row = contiguous_row(logits, t);
            log_sum_exp(&row) - row[tokens[t + 1] as usize] as f64
        })
        .collect();
    losses.iter().sum()
}

/// Accumulates a [`Perplexity`] one window at a time.
#[derive(Debug)]
pub struct PerplexityTally {
    total: f64,
    windows: usize,
    seqlen: usize,
}

impl PerplexityTally {
    /// An empty tally for windows of `seqlen` tokens.
    pub fn new(seqlen: usize) -> Self {
        Self {
            total: 0.0,
            windows: 0,
            seqlen,
        }
    }

    /// Adds one window: its `[seqlen, vocab]` logits and its token ids.
    pub fn add(&mut self, logits: ArrayView2<f32>, ids: &[i64]) {
        self.add_nll(window_nll(logits, ids), ids.len());
    }

    /// Adds one window of `tokens` tokens by its summed loss ([`window_nll`]).
    pub fn add_nll(&mut self, nll: f64, tokens: usize) {
        // Mean over the seqlen − 1 predictions, weighted as seqlen (reference convention).
        self.total += nll / (tokens - 1).max(1) as f64 * tokens as f64;
        self.windows += 1;
    }

    /// The perplexity so far.
    pub fn finish(&self) -> Perplexity {
        Perplexity {
            perplexity: (self.total / (self.windows * self.seqlen).max(1) as f64).exp(),
            windows: self.windows,
            seqlen: self.seqlen,
        }
    }
}

/// The windows of `tokens` to evaluate on: `seqlen` long, each `prefix` (the tokenizer's
/// [`window_prefix`](crate::calib::TextTokenizer::window_prefix)) followed by the next
/// `seqlen − prefix.len()` tokens of the text, at most `max_windows`; an error when not even one
/// fits.
pub fn eval_windows(
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    prefix: &[u32],
) -> Result<Vec<Vec<i64>>> {
    let text_len = seqlen.saturating_sub(prefix.len());
    let windows = consecutive_windows(tokens, text_len, max_windows);
    if windows.is_empty() || text_len < 1 || seqlen < 2 {
        return Err(Error::invalid(
            "--eval-text",
            format!(
                "{} tokens are not enough for one window of --seqlen {seqlen}{}",
                tokens.len(),
                if prefix.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} of them the tokenizer's leading special tokens)",
                        prefix.len()
                    )
                }
            ),
        ));
    }
    Ok(windows
        .iter()
        .map(|w| prefix.iter().chain(w.iter()).map(|&t| t as i64).collect())
        .collect())
}

/// Runs `lm` on `ids` and checks that every id is inside its vocabulary.
pub fn checked_logits(lm: &mut CausalLm, ids: &[i64]) -> Result<Array2<f32>> {
    let logits = lm.logits(ids)?;
    check_token_ids(ids, logits.ncols())?;
    Ok(logits)
}

/// An error naming `--tokenizer` when an id of `ids` is outside a vocabulary of `vocab` tokens
/// (the logits' width).
pub fn check_token_ids(ids: &[i64], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        Some(&bad) => Err(Error::invalid(
            "--tokenizer",
            format!(
                "token id {bad} is outside the model's vocabulary of {vocab}; the tokenizer does not belong to this model"
            ),
        )),
        None => Ok(()),
    }
}

/// Perplexity of `lm` on `tokens`, cut into windows of `seqlen` that start with `prefix` (at most
/// `max_windows`; [`eval_windows`]).
pub fn perplexity(
    lm: &mut CausalLm,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    prefix: &[u32],
    progress: &Progress,
    label: &str,
) -> Result<Perplexity> {
    let windows = eval_windows(tokens, seqlen, max_windows, prefix)?;
    let mut tally = PerplexityTally::new(seqlen);
    for (i, ids) in windows.iter().enumerate() {
        progress.item(label, i, windows.len());
        tally.add(checked_logits(lm, ids)?.view(), ids);
    }
    progress.item(label, windows.len(), windows.len());
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::{eval_windows, window_nll};

    #[test]
    fn every_window_starts_with_the_prefix_and_holds_seqlen_tokens() {
        let tokens: Vec<u32> = (10..20).collect();
        let plain = eval_windows(&tokens, 4, None, &[]).unwrap();
        assert_eq!(plain, vec![vec![10, 11, 12, 13], vec![14, 15, 16, 17]]);
        let bos = eval_windows(&tokens, 4, None, &[2]).unwrap();
        assert_eq!(
            bos,
            vec![
                vec![2, 10, 11, 12],
                vec![2, 13, 14, 15],
                vec![2, 16, 17, 18]
            ]
        );
        assert_eq!(eval_windows(&tokens, 4, Some(1), &[2]).unwrap().len(), 1);
        // A prefix that fills the window leaves no text to score.
        assert!(eval_windows(&tokens, 2, None, &[2, 3]).is_err());
        assert!(eval_windows(&tokens[..2], 4, None, &[2]).is_err());
    }
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
