//! NeuroAL's pure parts (docs/methods.md §1): the neuron-alignment metric, the block-wise λ ramp, the
//! row-wise distribution from alignment differences, the λ grids and the selection rule.

/// λ values of the block step (docs/methods.md §1.3); 0.25 is dropped at sparsity ≥ 0.8.
pub fn block_lambdas(sparsity: f64) -> Vec<f64> {
    let all = [
        0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12, 0.15, 0.20, 0.25,
    ];
    all.iter()
        .copied()
        .filter(|&l| sparsity < 0.8 || l < 0.25)
        .collect()
}

/// λ values of the row step (docs/methods.md §1.5(c)); 0 keeps the block step's uniform rows.
pub const ROW_LAMBDAS: [f64; 15] = [
    0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12, 0.15, 0.20, 0.25,
];

/// Lowest and highest sparsity any block or row may get.
pub const CLIP: (f64, f64) = (0.01, 0.99);

/// Per-block sparsity of the block step: `clip(s − λ + 2λ·l/(L−1))` for blocks `l = 0..L`, so
/// early blocks are pruned less and late ones more, with mean `s` before clipping (docs/methods.md §1.3).
pub fn block_ramp(sparsity: f64, lambda: f64, blocks: usize) -> Vec<f64> {
    (0..blocks)
        .map(|l| {
            let position = if blocks > 1 {
                l as f64 / (blocks - 1) as f64
            } else {
                0.5
            };
            (sparsity - lambda + 2.0 * lambda * position).clamp(CLIP.0, CLIP.1)
        })
        .collect()
}

/// Per-row sparsity of a producer from its consumer's alignment difference `g` (one entry per
/// output row): rows whose channel lost the most activation get more density (docs/methods.md §1.5(b)).
/// `None` (uniform rows at `block_sparsity`) when `g` sums to zero or is constant; the reference
/// divides by zero in the second case.
pub fn row_sparsities(block_sparsity: f64, lambda: f64, g: &[f32]) -> Option<Vec<f64>> {
    let sum: f64 = g.iter().map(|&v| v as f64).sum();
    let (min, max) = g
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v as f64), hi.max(v as f64))
        });
    if sum == 0.0 || max <= min || lambda == 0.0 {
        return None;
    }
    let spread: Vec<f64> = g
        .iter()
        .map(|&v| 2.0 * lambda * (v as f64 - min) / (max - min))
        .collect();
    let mean = spread.iter().sum::<f64>() / spread.len() as f64;
    Some(
        spread
            .iter()
            .map(|x| (1.0 - ((1.0 - block_sparsity) + x - mean)).clamp(CLIP.0, CLIP.1))
            .collect(),
    )
}

/// One linear's misalignment: `‖a/Σa − b/Σb‖₂ / C` between its input-channel norms with the
/// block dense (`dense`) and pruned (`sparse`) on the same inputs (docs/methods.md §1.2). An all-zero
/// vector counts as the zero distribution.
pub fn misalignment(dense: &[f32], sparse: &[f32]) -> f64 {
    let normalize = |v: &[f32]| -> Vec<f64> {
        let s: f64 = v.iter().map(|&x| x as f64).sum();
        v.iter()
            .map(|&x| if s > 0.0 { x as f64 / s } else { 0.0 })
            .collect()
    };
    let (a, b) = (normalize(dense), normalize(sparse));
    let distance: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    distance / dense.len().max(1) as f64
}

/// Index of the smallest score, the first one on ties (Python's `list.index(min(...))`).
pub fn argmin_first(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if best.is_none_or(|b| *s < scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_ramp_by_hand() {
        // s = 0.7, λ = 0.1, 5 blocks: 0.6, 0.65, 0.7, 0.75, 0.8.
        let r = block_ramp(0.7, 0.1, 5);
        for (got, want) in r.iter().zip([0.6, 0.65, 0.7, 0.75, 0.8]) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        // The clip at 0.99: s = 0.9, λ = 0.2 over 3 blocks → 0.7, 0.9, 0.99 (not 1.1).
        let clipped = block_ramp(0.9, 0.2, 3);
        for (got, want) in clipped.iter().zip([0.7, 0.9, 0.99]) {
            assert!((got - want).abs() < 1e-12, "{clipped:?}");
        }
        assert_eq!(block_lambdas(0.7).len(), 14);
        assert_eq!(block_lambdas(0.8).len(), 13);
    }

    #[test]
    fn row_sparsities_by_hand() {
        // g = [0, 1, 2], λ = 0.1: spread 2λ·[0, .5, 1] = [0, .1, .2], mean .1, density
        // (1 − 0.5) + [−.1, 0, .1] → sparsity [0.6, 0.5, 0.4]: more loss, more density.
        let s = row_sparsities(0.5, 0.1, &[0.0, 1.0, 2.0]).unwrap();
        for (got, want) in s.iter().zip([0.6, 0.5, 0.4]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert_eq!(row_sparsities(0.5, 0.1, &[0.0, 0.0]), None);
        assert_eq!(row_sparsities(0.5, 0.1, &[3.0, 3.0]), None);
        assert_eq!(row_sparsities(0.5, 0.0, &[0.0, 1.0]), None);
    }

    #[test]
    fn misalignment_is_zero_when_nothing_changes_and_grows_with_the_change() {
        let dense = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(misalignment(&dense, &dense), 0.0);
        // Scale does not matter, only the distribution.
        assert!(misalignment(&dense, &[2.0, 4.0, 6.0, 8.0]) < 1e-12);
        let small = misalignment(&dense, &[1.0, 2.0, 3.0, 3.5]);
        let large = misalignment(&dense, &[1.0, 2.0, 3.0, 1.0]);
        assert!(0.0 < small && small < large);
        // [0.5, 0.5] vs [1, 0]: distance sqrt(0.5), over length 2.
        assert!((misalignment(&[1.0, 1.0], &[1.0, 0.0]) - 0.5f64.sqrt() / 2.0).abs() < 1e-12);
    }

    #[test]
    fn argmin_takes_the_first_of_equal_minima() {
        assert_eq!(argmin_first(&[3.0, 1.0, 2.0, 1.0]), Some(1));
        assert_eq!(argmin_first(&[]), None);
    }
}
