//! RIA's channel permutation for N:M masks (docs/methods.md §2.5): the input channels of a matrix
//! are put in an order where every group of M consecutive channels mixes important and
//! unimportant ones, so that an N:M mask taken in that order keeps more of the score than one
//! taken in the stored order. The written model stores the matrix in that order and reorders
//! the linear's input to match (docs/onnx-layouts.md, "Input permutations").
//!
//! The order starts from RIA's channel reallocation (channels sorted by their summed score and
//! dealt to the groups in a zig-zag) and is then refined by linear sum assignment: for each
//! position within a group, the channels seated there are re-seated across the groups so that
//! the total kept score is the largest given the other positions.

use rayon::prelude::*;

/// Groups in one assignment problem, at most. A wider matrix is refined in contiguous
/// segments of groups; the cost grows with the square of this per segment.
const MAX_ASSIGNMENT: usize = 256;
/// Refinement sweeps (each re-seats every position of every group once), at most.
const MAX_SWEEPS: usize = 3;
/// The refinement stops after a sweep that raised the kept score by less than this fraction.
/// On SmolLM2's matrices the first sweep gains about 1%, the second under 0.1%, the third
/// under 0.03%.
const MIN_SWEEP_GAIN: f64 = 1e-3;

/// The order of input channels (position → stored column) in which N:M groups of the row-major
/// `[rows, cols]` `scores` keep the most score that the reallocation and its refinement find;
/// `None` when that order keeps no more than the stored order. `cols` must be a multiple of `m`
/// and `n < m`.
pub fn nm_channel_order(
    scores: &[f32],
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
) -> Option<Vec<u32>> {
    assert!(
        n < m && cols.is_multiple_of(m) && scores.len() == rows * cols,
        "N:M groups must tile the row"
    );
    let groups = cols / m;
    if groups < 2 || n == 0 || rows == 0 {
        return None;
    }
    let columns = Columns::new(scores, rows, cols);
    let keep = m - n;
    let mut order = reallocation(&columns, m);
    let mut kept = columns.kept(&order, m, keep);
    for _ in 0..MAX_SWEEPS {
        for position in 0..m {
            for segment in segments(groups) {
                reseat(&columns, &mut order, segment, position, m, keep);
            }
        }
        let now = columns.kept(&order, m, keep);
        let gain = now - kept;
        kept = now;
        if gain < MIN_SWEEP_GAIN * kept {
            break;
        }
    }
    let stored: Vec<u32> = (0..cols as u32).collect();
    (kept > columns.kept(&stored, m, keep)).then_some(order)
}

/// The row-major `[rows, cols]` `matrix` with its columns in `order` (column `q` of the result
/// is column `order[q]` of `matrix`).
pub fn permute_columns<T: Copy + Send + Sync>(
    matrix: &[T],
    rows: usize,
    cols: usize,
    order: &[u32],
) -> Vec<T> {
    assert_eq!(order.len(), cols, "one position per column");
    assert_eq!(matrix.len(), rows * cols, "matrix must be rows × cols");
    let mut out = matrix.to_vec();
    if cols > 0 {
        out.par_chunks_mut(cols)
            .zip(matrix.par_chunks(cols))
            .for_each(|(to, from)| {
                for (t, &o) in to.iter_mut().zip(order) {
                    *t = from[o as usize];
                }
            });
    }
    out
}

/// The scores column by column: each input channel's scores over the rows, contiguous.
struct Columns {
    values: Vec<f32>,
    rows: usize,
}

impl Columns {
    fn new(scores: &[f32], rows: usize, cols: usize) -> Self {
        let mut values = vec![0f32; rows * cols];
        values.par_chunks_mut(rows).enumerate().for_each(|(j, c)| {
            for (r, v) in c.iter_mut().enumerate() {
                *v = scores[r * cols + j];
            }
        });
        Self { values, rows }
    }

    fn column(&self, j: u32) -> &[f32] {
        &self.values[j as usize * self.rows..(j as usize + 1) * self.rows]
    }

    /// The score an N:M mask keeps (the `keep` highest of every group of `m`, row by row) with
    /// the channels in `order`. Summed group by group in order: no dependence on the thread count.
    fn kept(&self, order: &[u32], m: usize, keep: usize) -> f64 {
        let per_group: Vec<f64> = order
            .par_chunks(m)
            .map(|group| {
                let cols: Vec<&[f32]> = group.iter().map(|&j| self.column(j)).collect();
                let mut values = vec![0f32; m];
                let mut sum = 0.0;
                for r in 0..self.rows {
                    for (v, c) in values.iter_mut().zip(&cols) {
                        *v = c[r];
                    }
                    values.sort_unstable_by(|a, b| b.total_cmp(a));
                    sum += values[..keep].iter().map(|&v| v as f64).sum::<f64>();
                }
                sum
            })
            .collect();
        per_group.iter().sum()
    }
}

/// RIA's channel reallocation: channels sorted by their summed score (ascending, the lower index
/// first on ties) and cut into `m` runs of as many channels as there are groups; run `q` fills
/// position `q` of every group, forwards for even `q` and backwards for odd `q`, so that each
/// group holds one channel from every run.
fn reallocation(columns: &Columns, m: usize) -> Vec<u32> {
    let cols = columns.values.len() / columns.rows;
    let importance: Vec<f64> = columns
        .values
        .par_chunks(columns.rows)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect();
    let mut sorted: Vec<u32> = (0..cols as u32).collect();
    sorted.sort_by(|&a, &b| {
        importance[a as usize]
            .total_cmp(&importance[b as usize])
            .then(a.cmp(&b))
    });
    let groups = cols / m;
    let mut order = vec![0u32; cols];
    for q in 0..m {
        for g in 0..groups {
            let rank = if q.is_multiple_of(2) {
                g
            } else {
                groups - 1 - g
            };
            order[g * m + q] = sorted[q * groups + rank];
        }
    }
    order
}

/// Contiguous ranges of groups, each at most [`MAX_ASSIGNMENT`] long and as even as possible.
fn segments(groups: usize) -> Vec<std::ops::Range<usize>> {
    let count = groups.div_ceil(MAX_ASSIGNMENT);
    (0..count)
        .map(|s| s * groups / count..(s + 1) * groups / count)
        .collect()
}

/// Re-seats the channels at `position` of the groups in `segment` so that the kept score is the
/// largest given every other position (never lower than before: staying put is one assignment).
///
/// With `t` the `keep`-th largest score of a group's other `m − 1` channels in a row, a channel
/// of score `v` seated there adds `max(0, v − t)` to what the row keeps; the rest of the group's
/// kept score does not depend on the seat. So the gain of every (group, channel) pair is a sum
/// over rows, and the best seating is a linear sum assignment.
fn reseat(
    columns: &Columns,
    order: &mut [u32],
    segment: std::ops::Range<usize>,
    position: usize,
    m: usize,
    keep: usize,
) {
    let rows = columns.rows;
    let size = segment.len();
    if size < 2 {
        return;
    }
    // The keep-th largest of each group's other channels, row by row.
    let thresholds: Vec<Vec<f32>> = segment
        .clone()
        .into_par_iter()
        .map(|g| {
            let others: Vec<&[f32]> = (0..m)
                .filter(|&q| q != position)
                .map(|q| columns.column(order[g * m + q]))
                .collect();
            let mut values = vec![0f32; others.len()];
            (0..rows)
                .map(|r| {
                    for (v, c) in values.iter_mut().zip(&others) {
                        *v = c[r];
                    }
                    values.sort_unstable_by(|a, b| b.total_cmp(a));
                    values[keep - 1]
                })
                .collect()
        })
        .collect();
    let seated: Vec<u32> = segment.clone().map(|g| order[g * m + position]).collect();
    // cost[g][h]: minus the gain of seating channel `seated[h]` in group `g`.
    let cost: Vec<f64> = thresholds
        .par_iter()
        .flat_map_iter(|t| seated.iter().map(move |&j| -excess(columns.column(j), t)))
        .collect();
    let assignment = min_cost_assignment(&cost, size);
    for (g, &h) in segment.zip(&assignment) {
        order[g * m + position] = seated[h];
    }
}

/// `Σ max(0, v − t)` over the rows: eight running f32 sums (which the compiler keeps in one
/// vector register), added up in f64.
fn excess(values: &[f32], thresholds: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let (v_body, v_tail) = values.split_at(values.len() / LANES * LANES);
    let t_body = &thresholds[..v_body.len()];
    for (v, t) in v_body.chunks_exact(LANES).zip(t_body.chunks_exact(LANES)) {
        for k in 0..LANES {
            lanes[k] += (v[k] - t[k]).max(0.0);
        }
    }
    let tail: f64 = v_tail
        .iter()
        .zip(&thresholds[v_body.len()..])
        .map(|(&v, &t)| (v - t).max(0.0) as f64)
        .sum();
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
}

/// The assignment of rows to columns of the square `size × size` row-major `cost` matrix with the
/// least total cost (`result[row]` = its column): the Hungarian method with potentials, O(size³).
fn min_cost_assignment(cost: &[f64], size: usize) -> Vec<usize> {
    assert_eq!(cost.len(), size * size, "a square cost matrix");
    // 1-based rows and columns; column 0 is a sentinel for the row being added.
    let (mut u, mut v) = (vec![0.0f64; size + 1], vec![0.0f64; size + 1]);
    let mut row_of = vec![0usize; size + 1]; // row_of[col]: the row seated in col (0: none)
    let mut way = vec![0usize; size + 1];
    for row in 1..=size {
        row_of[0] = row;
        let mut col = 0usize;
        let mut min_slack = vec![f64::INFINITY; size + 1];
        let mut used = vec![false; size + 1];
        loop {
            used[col] = true;
            let r = row_of[col];
            let (mut delta, mut next) = (f64::INFINITY, 0usize);
            for c in 1..=size {
                if used[c] {
                    continue;
                }
                let slack = cost[(r - 1) * size + c - 1] - u[r] - v[c];
                if slack < min_slack[c] {
                    min_slack[c] = slack;
                    way[c] = col;
                }
                if min_slack[c] < delta {
                    delta = min_slack[c];
                    next = c;
                }
            }
            for c in 0..=size {
                if used[c] {
                    u[row_of[c]] += delta;
                    v[c] -= delta;
                } else {
                    min_slack[c] -= delta;
                }
            }
            col = next;
            if row_of[col] == 0 {
                break;
            }
        }
        // Flip the augmenting path back to the sentinel.
        loop {
            let previous = way[col];
            row_of[col] = row_of[previous];
            col = previous;
            if col == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![0usize; size];
    for c in 1..=size {
        assignment[row_of[c] - 1] = c - 1;
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::Rng;
    use crate::prune::{prune_mask, MaskRule};

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| rng.below(1_000_000) as f32 / 1e6)
            .collect()
    }

    /// Every permutation of `0..n`, by Heap's algorithm.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(n, &mut (0..n).collect(), &mut out);
        out
    }

    #[test]
    fn the_assignment_is_the_cheapest_of_all_permutations() {
        let mut rng = Rng::new(11);
        for size in 1..=6 {
            for _ in 0..20 {
                let cost: Vec<f64> = random(&mut rng, size * size)
                    .iter()
                    .map(|&c| c as f64 - 0.5)
                    .collect();
                let total = |a: &[usize]| -> f64 {
                    a.iter().enumerate().map(|(r, &c)| cost[r * size + c]).sum()
                };
                let found = min_cost_assignment(&cost, size);
                let mut seen = found.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..size).collect::<Vec<_>>(), "not a permutation");
                let best = permutations(size)
                    .iter()
                    .map(|p| total(p))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (total(&found) - best).abs() < 1e-9,
                    "{found:?}: {} > {best}",
                    total(&found)
                );
            }
        }
    }

    /// The score a 2:4 mask keeps with the channels in `order`, from the mask itself.
    fn kept_by_mask(scores: &[f32], rows: usize, cols: usize, order: &[u32]) -> f64 {
        let permuted = permute_columns(scores, rows, cols, order);
        let mask = prune_mask(&permuted, rows, cols, &MaskRule::NofM { n: 2, m: 4 });
        permuted
            .iter()
            .zip(&mask.pruned)
            .filter(|(_, &p)| !p)
            .map(|(&s, _)| s as f64)
            .sum()
    }

    #[test]
    fn clustered_important_channels_are_spread_over_the_groups() {
        // Channels 0..4 score 10 in every row, 4..8 score 1: stored, the first group keeps two
        // tens and drops two, the second keeps two ones. Two tens per group keep all four.
        let (rows, cols) = (3, 8);
        let scores: Vec<f32> = (0..rows * cols)
            .map(|i| if i % cols < 4 { 10.0 } else { 1.0 })
            .collect();
        let order = nm_channel_order(&scores, rows, cols, 2, 4).expect("a better order");
        for group in order.chunks(4) {
            assert_eq!(group.iter().filter(|&&j| j < 4).count(), 2, "{order:?}");
        }
        let stored: Vec<u32> = (0..cols as u32).collect();
        assert_eq!(kept_by_mask(&scores, rows, cols, &stored), 3.0 * 22.0);
        assert_eq!(kept_by_mask(&scores, rows, cols, &order), 3.0 * 40.0);
    }

    #[test]
    fn the_order_is_a_permutation_that_keeps_more_than_the_stored_one() {
        let mut rng = Rng::new(5);
        for (rows, cols) in [(7, 16), (5, 64), (3, 40)] {
            // A few strong channels, next to each other, as outlier channels are.
            let mut scores = random(&mut rng, rows * cols);
            for r in 0..rows {
                for j in 0..4 {
                    scores[r * cols + j] *= 30.0;
                }
            }
            let order = nm_channel_order(&scores, rows, cols, 2, 4).expect("a better order");
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..cols as u32).collect::<Vec<_>>());
            let stored: Vec<u32> = (0..cols as u32).collect();
            let columns = Columns::new(&scores, rows, cols);
            // The fast count agrees with the mask's own.
            for o in [&stored, &order] {
                let by_mask = kept_by_mask(&scores, rows, cols, o);
                assert!((columns.kept(o, 4, 2) - by_mask).abs() < 1e-6 * by_mask);
            }
            assert!(
                kept_by_mask(&scores, rows, cols, &order)
                    > kept_by_mask(&scores, rows, cols, &stored)
            );
            // The refinement keeps at least what the reallocation alone keeps.
            let dealt = reallocation(&columns, 4);
            assert!(columns.kept(&order, 4, 2) >= columns.kept(&dealt, 4, 2));
        }
    }

    #[test]
    fn a_stored_order_that_cannot_be_beaten_is_kept() {
        // Every channel scores the same in every row: nothing to gain.
        assert_eq!(nm_channel_order(&[1.0; 4 * 16], 4, 16, 2, 4), None);
        // One group: nothing to exchange.
        assert_eq!(nm_channel_order(&[1.0, 2.0, 3.0, 4.0], 1, 4, 2, 4), None);
    }

    #[test]
    fn wide_matrices_are_refined_in_segments_that_cover_every_group() {
        for groups in [1, 255, 256, 257, 700] {
            let s = segments(groups);
            assert!(s.iter().all(|r| r.len() <= MAX_ASSIGNMENT && !r.is_empty()));
            assert_eq!(s.first().unwrap().start, 0);
            assert_eq!(s.last().unwrap().end, groups);
            assert!(s.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn permuting_columns_moves_whole_columns() {
        let m = [1, 2, 3, 4, 5, 6];
        assert_eq!(permute_columns(&m, 2, 3, &[2, 0, 1]), [3, 1, 2, 6, 4, 5]);
    }
}
