//! Property tests of the masks: on random score matrices full of ties, every rule prunes exactly
//! the counts the reference's rounding gives, and exactly the entries its stable sorts pick.
//! Scores are non-negative, as every score is (|W| times non-negative factors).

use neuroal_onnx::prune::{neuron_prune_count, prune_mask, row_prune_count, MaskRule, RowMask};
use proptest::prelude::*;

/// A `[rows, cols]` score matrix: few distinct values (ties everywhere) or any non-negative float.
fn scores(rows: usize, cols: usize) -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![
        (0u8..4).prop_map(f32::from),
        (0u8..4).prop_map(|v| f32::from(v) * 1e-3),
        0.0f32..1e6,
    ];
    proptest::collection::vec(value, rows * cols)
}

/// A sparsity in [0, 1): anywhere, or exactly k/cols, where rounding is most fragile.
fn sparsity(cols: usize) -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..1.0f64,
        (0..cols).prop_map(move |k| k as f64 / cols as f64)
    ]
}

/// `(rows, cols, scores)` with 1–6 rows and 1–80 columns.
fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=6, 1usize..=80).prop_flat_map(|(r, c)| (Just(r), Just(c), scores(r, c)))
}

/// Indices of `row` in stable ascending (`ascending`) or descending score order.
fn stable_order(row: &[f32], ascending: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if ascending {
        idx.sort_by(|a, b| row[*a].partial_cmp(&row[*b]).unwrap());
    } else {
        idx.sort_by(|a, b| row[*b].partial_cmp(&row[*a]).unwrap());
    }
    idx
}

/// The pruned flags of row `r`.
fn row_of(mask: &RowMask, r: usize) -> &[bool] {
    &mask.pruned[r * mask.cols..(r + 1) * mask.cols]
}

/// Flags with `pruned` set at the given indices.
fn flags(len: usize, pruned: &[usize]) -> Vec<bool> {
    let mut out = vec![false; len];
    pruned.iter().for_each(|&i| out[i] = true);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// "row": floor(cols · s) per row, the lowest scores, the lower index first on ties.
    #[test]
    fn row_masks_prune_what_a_stable_ascending_sort_picks(
        (rows, cols, s, scores) in matrix()
            .prop_flat_map(|(r, c, m)| (Just(r), Just(c), sparsity(c), Just(m)))
    ) {
        let mask = prune_mask(&scores, rows, cols, &MaskRule::Row(s));
        let k = row_prune_count(cols, s);
        for r in 0..rows {
            let row = &scores[r * cols..(r + 1) * cols];
            let got = row_of(&mask, r);
            prop_assert_eq!(got.iter().filter(|&&p| p).count(), k, "row {}", r);
            let order = stable_order(row, true);
            prop_assert_eq!(got.to_vec(), flags(cols, &order[..k]), "row {}", r);
        }
    }

    /// "neuron": keeps floor((1 − s_r) · cols) of row r, the highest scores, the lower index
    /// kept first on ties.
    #[test]
    fn neuron_masks_keep_what_a_stable_descending_sort_picks(
        (rows, cols, per_row, scores) in matrix().prop_flat_map(|(r, c, m)| {
            (Just(r), Just(c), proptest::collection::vec(sparsity(c), r), Just(m))
        })
    ) {
        let mask = prune_mask(&scores, rows, cols, &MaskRule::Neuron(per_row.clone()));
        for r in 0..rows {
            let row = &scores[r * cols..(r + 1) * cols];
            let got = row_of(&mask, r);
            let k = neuron_prune_count(cols, per_row[r]);
            prop_assert_eq!(got.iter().filter(|&&p| p).count(), k, "row {}", r);
            let order = stable_order(row, false);
            prop_assert_eq!(got.to_vec(), flags(cols, &order[cols - k..]), "row {}", r);
        }
    }

    /// N:M: exactly N of every M consecutive columns, the lowest scores, lower index first.
    #[test]
    fn n_of_m_masks_prune_exactly_n_of_every_group(
        (rows, n, m, scores) in (1usize..=4, 1usize..=8, 1usize..=10)
            .prop_flat_map(|(rows, m, groups)| {
                (Just(rows), 0..m, Just(m), scores(rows, m * groups))
            })
    ) {
        let cols = scores.len() / rows;
        let mask = prune_mask(&scores, rows, cols, &MaskRule::NofM { n, m });
        for r in 0..rows {
            let row = &scores[r * cols..(r + 1) * cols];
            let got = row_of(&mask, r);
            for (g, (group, flags_g)) in row.chunks(m).zip(got.chunks(m)).enumerate() {
                prop_assert_eq!(flags_g.iter().filter(|&&p| p).count(), n, "row {} group {}", r, g);
                let order = stable_order(group, true);
                prop_assert_eq!(flags_g.to_vec(), flags(m, &order[..n]), "row {} group {}", r, g);
            }
        }
        prop_assert_eq!(mask.count(), rows * cols / m * n);
    }
}
