//! OWL, outlier-weighted layerwise sparsity (Yin et al. 2024; docs/methods.md §3.2): blocks with more
//! outlier Wanda scores are pruned less.

use super::neuroal::CLIP;

/// Percentage of `scores` above `m` times their mean (the block's outlier ratio `D_l`).
pub fn outlier_ratio(scores: &[f32], m: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / scores.len() as f64;
    let outliers = scores.iter().filter(|&&s| s as f64 > m * mean).count();
    100.0 * outliers as f64 / scores.len() as f64
}

/// Per-block sparsity from the blocks' outlier ratios (more outliers, less pruning), spread ±λ
/// around the target by [`density_spread`].
pub fn owl_sparsities(ratios: &[f64], sparsity: f64, lambda: f64) -> Vec<f64> {
    density_spread(ratios, sparsity, lambda)
}

/// Per-block sparsity that gives blocks with larger `values` more density: density
/// `(1 − s) + 2λ·(v − min v)/(max v − min v) − mean(...)`, clipped to [0.01, 0.99]. Equal values
/// give every block `s`. OWL maps its outlier ratios with it, DLP its importances.
pub fn density_spread(values: &[f64], sparsity: f64, lambda: f64) -> Vec<f64> {
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &d| {
            (lo.min(d), hi.max(d))
        });
    if values.is_empty() || max <= min {
        return vec![sparsity; values.len()];
    }
    let spread: Vec<f64> = values
        .iter()
        .map(|d| 2.0 * lambda * (d - min) / (max - min))
        .collect();
    let mean = spread.iter().sum::<f64>() / spread.len() as f64;
    spread
        .iter()
        .map(|x| (1.0 - ((1.0 - sparsity) + x - mean)).clamp(CLIP.0, CLIP.1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_ratio_by_hand() {
        // mean 2.5, M = 2 → threshold 5: only 10 is above, 1 of 4.
        assert_eq!(outlier_ratio(&[0.0, 0.0, 0.0, 10.0], 2.0), 25.0);
        assert_eq!(outlier_ratio(&[1.0, 1.0], 5.0), 0.0);
    }

    #[test]
    fn owl_sparsities_by_hand() {
        // D = [0, 5, 10], λ = 0.08: spread [0, .08, .16], mean .08; density 0.3 + [−.08, 0, .08]
        // → sparsity [0.78, 0.7, 0.62]: the most outliers, the least pruning.
        let s = owl_sparsities(&[0.0, 5.0, 10.0], 0.7, 0.08);
        for (got, want) in s.iter().zip([0.78, 0.7, 0.62]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert_eq!(owl_sparsities(&[3.0, 3.0], 0.6, 0.08), vec![0.6, 0.6]);
    }
}
