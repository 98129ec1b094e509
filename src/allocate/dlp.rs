//! DLP, dynamic layerwise pruning (Chen et al., ICML 2025; docs/methods.md §3.5): the sparsity
//! spread over blocks as OWL spreads it, from each block's mean Wanda score.

use super::owl::density_spread;

/// Per-block sparsity from each block's mean Wanda score: importance `1 − score / Σ scores`, spread ±α by [`density_spread`]. A block whose
/// weights score higher on average is pruned more, as the authors' code does.
pub fn dlp_sparsities(mean_scores: &[f64], sparsity: f64, alpha: f64) -> Vec<f64> {
    let total: f64 = mean_scores.iter().map(|s| s.abs()).sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![sparsity; mean_scores.len()];
    }
    let importance: Vec<f64> = mean_scores.iter().map(|s| 1.0 - s.abs() / total).collect();
    density_spread(&importance, sparsity, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlp_sparsities_by_hand() {
        // Scores [1, 2, 5], Σ 8: importance [7/8, 6/8, 3/8]; α = 0.15 spreads it to
        // [0.3, 0.225, 0], mean 0.175; density 0.3 + [0.125, 0.05, −0.175]
        // → sparsity [0.575, 0.65, 0.875]: the highest mean score, the most pruning.
        let s = dlp_sparsities(&[1.0, 2.0, 5.0], 0.7, 0.15);
        for (got, want) in s.iter().zip([0.575, 0.65, 0.875]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert_eq!(dlp_sparsities(&[0.0, 0.0], 0.6, 0.15), vec![0.6, 0.6]);
    }
}
