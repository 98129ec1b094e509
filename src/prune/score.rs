//! Base scores: higher means more important (kept first).

/// Magnitude score |W_ij| of every weight.
pub fn magnitude(weights: &[f32]) -> Vec<f32> {
    weights.iter().map(|w| w.abs()).collect()
}
