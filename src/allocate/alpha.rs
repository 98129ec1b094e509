//! AlphaPruning (Lu et al. 2024; docs/methods.md §3.4): the heavy-tail exponent α of each weight matrix's
//! eigenvalue spectrum, averaged per block; less heavy-tailed (higher α) blocks are pruned more,
//! with the parameter-weighted mean sparsity kept at the target.

use super::neuroal::CLIP;

/// The power-law exponent of ascending eigenvalues `eigs` (σ² of the matrix), by the Hill
/// estimator with the `xmin_peak` choice of the upstream code: candidates `xmin` from the
/// histogram peak of log10(λ), each with α = 1 + n / (Σ ln λ_k − n ln λ_i) and the KS distance;
/// the α of the smallest distance. The lower bound of the candidate range is `log10(0.95·peak)`
/// compared with eigenvalues, as upstream does.
pub fn hill_alpha(eigs: &[f64]) -> f64 {
    let n_all = eigs.len();
    if n_all < 2 {
        return 1.0;
    }
    let logs10: Vec<f64> = eigs
        .iter()
        .map(|e| e.max(f64::MIN_POSITIVE).log10())
        .collect();
    let (lo, hi) = logs10
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let bins = 100;
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let mut hist = vec![0usize; bins];
    for &v in &logs10 {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        hist[b] += 1;
    }
    let peak = (0..bins).fold(0, |best, b| if hist[b] > hist[best] { b } else { best });
    let xmin2 = 10f64.powf(lo + peak as f64 * width);
    let (xmin_min, xmin_max) = ((0.95 * xmin2).log10(), 1.5 * xmin2);
    let ln: Vec<f64> = eigs.iter().map(|e| e.max(f64::MIN_POSITIVE).ln()).collect();
    let mut best = (f64::INFINITY, 1.0);
    for i in 0..n_all - 1 {
        let xmin = eigs[i];
        if xmin < xmin_min {
            continue;
        }
        if xmin > xmin_max {
            break;
        }
        let n = (n_all - i) as f64;
        let alpha = 1.0 + n / (ln[i..].iter().sum::<f64>() - n * ln[i]);
        let d = if alpha > 1.0 {
            eigs[i..]
                .iter()
                .enumerate()
                .map(|(k, e)| (1.0 - (e / xmin).powf(1.0 - alpha) - k as f64 / n).abs())
                .fold(0.0, f64::max)
        } else {
            1.0
        };
        if d < best.0 {
            best = (d, alpha);
        }
    }
    best.1
}

/// Per-matrix sparsity from per-matrix α (already averaged over each block) and parameter counts:
/// ratios from `1 − ε` (lowest α) to `1 + ε` (highest α), scaled so that the parameter-weighted
/// mean is `sparsity` (docs/methods.md §3.4), then clipped to [0.01, 0.99]. The reference does not clip; an
/// outlying α there can ask for more than 100% of a matrix (seen on SmolLM2 at 70%), which this
/// tool refuses to do; the clip may move the global sparsity slightly (reported as measured).
pub fn alpha_sparsities(alphas: &[f64], params: &[usize], sparsity: f64, epsilon: f64) -> Vec<f64> {
    let (min, max) = alphas
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &a| {
            (lo.min(a), hi.max(a))
        });
    let ratios: Vec<f64> = alphas
        .iter()
        .map(|a| {
            if max > min {
                (a - min) / (max - min) * (2.0 * epsilon) + (1.0 - epsilon)
            } else {
                1.0
            }
        })
        .collect();
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    let weighted: f64 = ratios.iter().zip(params).map(|(r, &p)| r * p as f64).sum();
    ratios
        .iter()
        .map(|r| (r * sparsity * total / weighted).clamp(CLIP.0, CLIP.1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_sparsities_by_hand() {
        // α = [2, 4, 3], equal sizes, ε = 0.3: ratios [0.7, 1.3, 1.0], mean 1 → s · ratios.
        let s = alpha_sparsities(&[2.0, 4.0, 3.0], &[10, 10, 10], 0.5, 0.3);
        for (got, want) in s.iter().zip([0.35, 0.65, 0.5]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        // Unequal sizes: the parameter-weighted mean stays at the target.
        let s = alpha_sparsities(&[2.0, 4.0], &[30, 10], 0.6, 0.2);
        let mean = (s[0] * 30.0 + s[1] * 10.0) / 40.0;
        assert!((mean - 0.6).abs() < 1e-12 && s[1] > s[0]);
        // Never more than 99% of a matrix, whatever the spread.
        assert_eq!(alpha_sparsities(&[1.0, 9.0], &[1000, 1], 0.9, 0.5)[1], 0.99);
    }

    #[test]
    fn hill_recovers_the_exponent_of_a_power_law() {
        // Eigenvalues at the quantiles of a Pareto law with α = 3 (density ∝ x^-3, x ≥ 1).
        let n = 2000;
        let eigs: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-1.0 / 2.0))
            .collect();
        let alpha = hill_alpha(&eigs);
        assert!((alpha - 3.0).abs() < 0.3, "α = {alpha}");
        // A heavier tail (α = 2) gives a smaller exponent.
        let heavy: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-1.0))
            .collect();
        assert!(hill_alpha(&heavy) < alpha);
    }
}
