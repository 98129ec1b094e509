//! Per-row masks with the reference's counting and tie rules (docs/methods.md §0.4).
//!
//! `"row"` granularity prunes `floor(C·s)` entries per row, lowest score first, and on a tie the
//! lower column index is pruned first (stable ascending sort). `"neuron"` granularity keeps
//! `floor((1 − s_r)·C)` entries of row r, highest score first, and on a tie the lower column index
//! is kept first (stable descending sort). Selection is a linear-time nth-element under the total
//! order (score, index), which picks exactly the set the stable sort would.

use rayon::prelude::*;
use std::cmp::Ordering;

/// How many entries of each row to prune, and which tie rule applies.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskRule {
    /// One sparsity for every row (`"row"` granularity).
    Row(f64),
    /// One sparsity per row (`"neuron"` granularity, after the NeuroAL row step).
    Neuron(Vec<f64>),
    /// N of every M consecutive input columns pruned (`--nm N:M`), lowest score first, the
    /// lower column index first on ties. `cols` must be a multiple of M.
    NofM {
        /// Pruned per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

impl MaskRule {
    /// The fraction of a `rows`-row matrix this rule aims to prune (mean over rows).
    pub fn mean_sparsity(&self, rows: usize) -> f64 {
        match self {
            MaskRule::Row(s) => *s,
            MaskRule::Neuron(per_row) => per_row.iter().sum::<f64>() / rows.max(1) as f64,
            MaskRule::NofM { n, m } => *n as f64 / *m as f64,
        }
    }
}

/// Entries pruned per row under `"row"` granularity: `floor(cols · s)`.
pub fn row_prune_count(cols: usize, sparsity: f64) -> usize {
    ((cols as f64 * sparsity).floor() as usize).min(cols)
}

/// Entries pruned in a row under `"neuron"` granularity: `cols − floor((1 − s_r) · cols)`.
pub fn neuron_prune_count(cols: usize, sparsity: f64) -> usize {
    let keep = (((1.0 - sparsity) * cols as f64).floor().max(0.0) as usize).min(cols);
    cols - keep
}

/// A pruning mask over a `[rows, cols]` matrix; `true` means pruned (set to zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowMask {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row-major flags, `rows · cols` long.
    pub pruned: Vec<bool>,
}

impl RowMask {
    /// Zeroes the pruned entries of a row-major `[rows, cols]` matrix.
    pub fn apply(&self, weights: &mut [f32]) {
        const CHUNK: usize = 1 << 16;
        weights
            .par_chunks_mut(CHUNK)
            .zip(self.pruned.par_chunks(CHUNK))
            .for_each(|(w, pruned)| {
                for (w, &p) in w.iter_mut().zip(pruned) {
                    *w = if p { 0.0 } else { *w }; // no branch: the flags are random
                }
            });
    }

    /// Number of pruned entries.
    pub fn count(&self) -> usize {
        self.pruned.iter().filter(|&&p| p).count()
    }
}

/// The mask of a row-major `[rows, cols]` score matrix under `rule` (rows in parallel).
pub fn prune_mask(scores: &[f32], rows: usize, cols: usize, rule: &MaskRule) -> RowMask {
    assert_eq!(scores.len(), rows * cols, "scores must be rows × cols");
    match rule {
        MaskRule::Neuron(per_row) => assert_eq!(per_row.len(), rows, "one sparsity per row"),
        MaskRule::NofM { n, m } => assert!(
            n < m && cols.is_multiple_of(*m),
            "N:M groups must tile the row"
        ),
        MaskRule::Row(_) => {}
    }
    let mut pruned = vec![false; rows * cols];
    if cols > 0 {
        pruned
            .par_chunks_mut(cols)
            .zip(scores.par_chunks(cols))
            .enumerate()
            .for_each(|(r, (mask_row, score_row))| match rule {
                MaskRule::Row(s) => {
                    prune_lowest(score_row, row_prune_count(cols, *s), true, mask_row)
                }
                MaskRule::Neuron(per_row) => prune_lowest(
                    score_row,
                    neuron_prune_count(cols, per_row[r]),
                    false,
                    mask_row,
                ),
                MaskRule::NofM { n, m } => {
                    for (scores, mask) in score_row
                        .chunks_exact(*m)
                        .zip(mask_row.chunks_exact_mut(*m))
                    {
                        prune_lowest(scores, *n, true, mask);
                    }
                }
            });
    }
    RowMask { rows, cols, pruned }
}

/// Marks the `n` lowest-scoring entries of `scores` in `mask`. On equal scores the lower index is
/// pruned first when `lower_index_first`, else the higher index is.
fn prune_lowest(scores: &[f32], n: usize, lower_index_first: bool, mask: &mut [bool]) {
    if n == 0 {
        return;
    }
    if n >= scores.len() {
        mask.fill(true);
        return;
    }
    let order = |a: &u32, b: &u32| -> Ordering {
        let by_score = scores[*a as usize].total_cmp(&scores[*b as usize]);
        by_score.then_with(|| {
            if lower_index_first {
                a.cmp(b)
            } else {
                b.cmp(a)
            }
        })
    };
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    idx.select_nth_unstable_by(n - 1, order);
    for &i in &idx[..n] {
        mask[i as usize] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: a stable sort, as the Python reference does it.
    fn reference_row(scores: &[f32], rule_row: bool, s: f64) -> Vec<bool> {
        let c = scores.len();
        let mut idx: Vec<usize> = (0..c).collect();
        let mut mask = vec![false; c];
        if rule_row {
            idx.sort_by(|a, b| scores[*a].partial_cmp(&scores[*b]).unwrap()); // stable ascending
            for &i in &idx[..(c as f64 * s).floor() as usize] {
                mask[i] = true;
            }
        } else {
            idx.sort_by(|a, b| scores[*b].partial_cmp(&scores[*a]).unwrap()); // stable descending
            let keep = ((1.0 - s) * c as f64).floor() as usize;
            for &i in &idx[keep..] {
                mask[i] = true;
            }
        }
        mask
    }

    #[test]
    fn counts_round_as_the_reference_does() {
        assert_eq!(row_prune_count(576, 0.7), 403); // 403.2 → 403
        assert_eq!(neuron_prune_count(576, 0.7), 576 - 172); // keep floor(172.8) = 172
        assert_eq!(row_prune_count(10, 0.5), 5);
        assert_eq!(neuron_prune_count(10, 0.5), 5);
        assert_eq!(row_prune_count(10, 0.0), 0);
        assert_eq!(neuron_prune_count(10, 0.99), 10);
    }

    #[test]
    fn ties_follow_the_stable_sorts() {
        // All scores equal: "row" prunes the lowest indices, "neuron" keeps the lowest indices.
        let scores = [1.0f32; 6];
        let row = prune_mask(&scores, 1, 6, &MaskRule::Row(0.5));
        assert_eq!(row.pruned, [true, true, true, false, false, false]);
        let neuron = prune_mask(&scores, 1, 6, &MaskRule::Neuron(vec![0.5]));
        assert_eq!(neuron.pruned, [false, false, false, true, true, true]);
    }

    #[test]
    fn matches_a_stable_sort_on_many_random_rows_with_ties() {
        let mut rng = crate::calib::Rng::new(12345);
        for trial in 0..200 {
            let cols = 1 + rng.below(64) as usize;
            // Few distinct values so ties are frequent.
            let scores: Vec<f32> = (0..cols).map(|_| rng.below(5) as f32).collect();
            let s = rng.below(100) as f64 / 100.0;
            let row = prune_mask(&scores, 1, cols, &MaskRule::Row(s));
            assert_eq!(
                row.pruned,
                reference_row(&scores, true, s),
                "row trial {trial}"
            );
            let neuron = prune_mask(&scores, 1, cols, &MaskRule::Neuron(vec![s]));
            assert_eq!(
                neuron.pruned,
                reference_row(&scores, false, s),
                "neuron trial {trial}"
            );
        }
    }

    #[test]
    fn n_of_m_prunes_within_each_group() {
        let scores = [4.0f32, 1.0, 3.0, 2.0, 0.0, 0.0, 9.0, 9.0];
        let mask = prune_mask(&scores, 1, 8, &MaskRule::NofM { n: 2, m: 4 });
        assert_eq!(
            mask.pruned,
            [false, true, false, true, true, true, false, false]
        );
    }

    #[test]
    fn per_row_counts_are_exact_and_apply_zeroes() {
        let (rows, cols) = (3, 7);
        let mut w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mask = prune_mask(
            &crate::prune::magnitude(&w),
            rows,
            cols,
            &MaskRule::Neuron(vec![0.1, 0.5, 0.9]),
        );
        let per_row: Vec<usize> = mask
            .pruned
            .chunks(cols)
            .map(|r| r.iter().filter(|&&p| p).count())
            .collect();
        assert_eq!(per_row, vec![1, 4, 7]); // 7 − floor(0.9·7)=1, 7 − floor(0.5·7)=4, 7 − floor(0.1·7)=7
        mask.apply(&mut w);
        assert_eq!(w.iter().filter(|v| **v == 0.0).count(), 12);
    }
}
