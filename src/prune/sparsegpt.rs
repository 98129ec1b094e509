//! The optimal-brain-surgeon update of SparseGPT (Frantar & Alistarh 2023; docs/methods.md §2.3),
//! used two ways: [`sparsegpt`] chooses its masks per block of 128 columns from `w² / (U_jj)²`,
//! where `U` is the upper Cholesky factor of `H⁻¹`, as the reference does; [`obs_with_mask`] keeps
//! a mask chosen by any other method and only re-fits the kept weights (the start of
//! [`reconstruct`](super::reconstruct)). Both walk the columns left to right, and each pruned
//! weight's error moves onto the weights of its row not yet processed.

use crate::error::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;

/// Columns processed together (the reference's `blocksize`).
pub const BLOCK_SIZE: usize = 128;
/// Dampening added to the Hessian's diagonal, relative to its mean (`percdamp`).
pub const PERCDAMP: f64 = 0.01;

/// Which weights the update removes.
enum Removal<'a> {
    /// The smallest `w² / (U_jj)²` of each 128-column block, jointly over its rows (SparseGPT).
    Unstructured(f64),
    /// The `n` smallest of every `m` consecutive weights of a row (SparseGPT with N:M).
    NofM(usize, usize),
    /// Exactly these, row-major (`true`: removed): a mask chosen by another method.
    Given(&'a [bool]),
}

/// Prunes row-major `weights` (`[rows, cols]`) in place to `sparsity` (or N:M), updating the kept
/// weights to compensate, given the Hessian `H = 2/N Σ XᵀX` (`[cols, cols]`, row-major).
/// `name` names the tensor in errors.
pub fn sparsegpt(
    name: &str,
    weights: &mut [f32],
    rows: usize,
    cols: usize,
    hessian: &[f64],
    sparsity: f64,
    nm: Option<(usize, usize)>,
) -> Result<()> {
    assert_eq!(weights.len(), rows * cols);
    assert_eq!(hessian.len(), cols * cols);
    // Dead inputs: never active, so their weights do nothing; the reference zeroes them.
    for j in (0..cols).filter(|&j| hessian[j * cols + j] == 0.0) {
        for r in 0..rows {
            weights[r * cols + j] = 0.0;
        }
    }
    let removal = match nm {
        Some((n, m)) => Removal::NofM(n, m),
        None => Removal::Unstructured(sparsity),
    };
    obs_update(name, weights, rows, cols, &dampened(hessian, cols), removal)
}

/// The OBS update with the removed weights given (`true`: removed, row-major), on the
/// [`dampened`] Hessian `h`: the first half of [`reconstruct`](super::reconstruct). Weights of
/// inputs that were never active stay as they are, so the mask, and with it every row's count, is
/// exactly the one given.
pub(super) fn obs_with_mask(
    name: &str,
    weights: &mut [f32],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    removed: &[bool],
) -> Result<()> {
    obs_update(name, weights, rows, cols, h, Removal::Given(removed))
}

/// `H` with a unit diagonal at inputs that were never active (which decouples them) and
/// [`PERCDAMP`] of its mean diagonal added to every diagonal entry.
pub(super) fn dampened(hessian: &[f64], cols: usize) -> Mat<f64> {
    let mut h = Mat::<f64>::from_fn(cols, cols, |i, j| hessian[i * cols + j]);
    for j in 0..cols {
        if h[(j, j)] == 0.0 {
            h[(j, j)] = 1.0;
        }
    }
    let damp = PERCDAMP * (0..cols).map(|j| h[(j, j)]).sum::<f64>() / cols as f64;
    for j in 0..cols {
        h[(j, j)] += damp;
    }
    h
}

/// The update shared by [`sparsegpt`] and [`obs_with_mask`], on the [`dampened`] Hessian `h`.
fn obs_update(
    name: &str,
    weights: &mut [f32],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    removal: Removal<'_>,
) -> Result<()> {
    assert_eq!(weights.len(), rows * cols);
    assert_eq!(h.nrows(), cols);
    let mut w: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    let not_pd = || {
        Error::tensor(
            name,
            "the calibration Hessian is not positive definite even after dampening; use more calibration data",
        )
    };
    let h_inv = h.llt(Side::Lower).map_err(|_| not_pd())?.inverse();
    // U upper with H⁻¹ = UᵀU: the transpose of the lower factor of H⁻¹.
    let l = h_inv.llt(Side::Lower).map_err(|_| not_pd())?;
    let u: Mat<f64> = l.L().transpose().to_owned();

    let mut start = 0;
    while start < cols {
        let end = (start + BLOCK_SIZE).min(cols);
        let width = end - start;
        let u_diag: Vec<f64> = (start..end).map(|j| u[(j, j)]).collect();
        // Unstructured SparseGPT chooses the block's mask before its updates, jointly over rows.
        let block_mask: Option<Vec<bool>> = match removal {
            Removal::Unstructured(sparsity) => {
                let scores: Vec<f64> = (0..rows)
                    .flat_map(|r| (0..width).map(move |c| (r, c)))
                    .map(|(r, c)| {
                        let v = w[r * cols + start + c];
                        v * v / (u_diag[c] * u_diag[c])
                    })
                    .collect();
                let mut sorted = scores.clone();
                sorted.sort_by(f64::total_cmp);
                let k = ((scores.len() as f64) * sparsity) as usize;
                let threshold = sorted[k.min(sorted.len() - 1)];
                Some(
                    scores
                        .iter()
                        .map(|&s| s <= threshold && sparsity > 0.0)
                        .collect(),
                )
            }
            _ => None,
        };
        // Each row's updates within the block depend only on that row: rows run in parallel.
        let u_block: Vec<f64> = (start..end)
            .flat_map(|i| (start..end).map(move |j| (i, j)))
            .map(|(i, j)| u[(i, j)])
            .collect();
        let mut errors = vec![0.0f64; rows * width];
        w.par_chunks_mut(cols)
            .zip(errors.par_chunks_mut(width))
            .enumerate()
            .for_each(|(r, (row, err))| {
                let block = &mut row[start..end];
                let mut pruned = match (&block_mask, &removal) {
                    (Some(mask), _) => mask[r * width..(r + 1) * width].to_vec(),
                    (None, Removal::Given(mask)) => mask[r * cols + start..r * cols + end].to_vec(),
                    _ => vec![false; width],
                };
                for i in 0..width {
                    if let Removal::NofM(n, m) = removal {
                        if i % m == 0 {
                            let group = (i..(i + m).min(width)).collect::<Vec<_>>();
                            let mut order = group.clone();
                            order.sort_by(|&a, &b| {
                                let sa = block[a] * block[a] / (u_diag[a] * u_diag[a]);
                                let sb = block[b] * block[b] / (u_diag[b] * u_diag[b]);
                                sa.total_cmp(&sb).then(a.cmp(&b))
                            });
                            for &j in order.iter().take(n) {
                                pruned[j] = true;
                            }
                        }
                    }
                    let value = block[i];
                    let kept = if pruned[i] { 0.0 } else { value };
                    let e = (value - kept) / u_diag[i];
                    block[i] = kept;
                    for j in i + 1..width {
                        block[j] -= e * u_block[i * width + j];
                    }
                    err[i] = e;
                }
            });
        // Lazy batch update of the columns after the block: W[:, end:] -= Err · U[start:end, end:].
        if end < cols {
            let err = MatRef::from_row_major_slice(&errors, rows, width);
            let u_rest = u.as_ref().submatrix(start, end, width, cols - end);
            let mut rest = Mat::<f64>::zeros(rows, cols - end);
            matmul(rest.as_mut(), Accum::Replace, err, u_rest, 1.0, Par::Seq);
            for r in 0..rows {
                for c in 0..cols - end {
                    w[r * cols + end + c] -= rest[(r, c)];
                }
            }
        }
        start = end;
    }
    for (dst, src) in weights.iter_mut().zip(&w) {
        *dst = *src as f32;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::sparsegpt;
    use crate::calib::Rng;
    use crate::prune::{prune_mask, wanda, ActivationStats, MaskRule};

    /// ‖(W − Ŵ) Xᵀ‖² for row-major W [rows, cols] and X [tokens, cols].
    pub(in crate::prune) fn reconstruction_error(
        w: &[f32],
        w_hat: &[f32],
        x: &[f32],
        cols: usize,
    ) -> f64 {
        let mut total = 0.0;
        for token in x.chunks_exact(cols) {
            for (row, row_hat) in w.chunks_exact(cols).zip(w_hat.chunks_exact(cols)) {
                let d: f64 = row
                    .iter()
                    .zip(row_hat)
                    .zip(token)
                    .map(|((a, b), x)| (*a as f64 - *b as f64) * *x as f64)
                    .sum();
                total += d * d;
            }
        }
        total
    }

    /// Random weights `[rows, cols]` and correlated activations `[tokens, cols]` with uneven
    /// channel scales, as in LLMs.
    pub(in crate::prune) fn layer(
        rows: usize,
        cols: usize,
        tokens: usize,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let mut normal = || {
            // Box–Muller from two uniforms.
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| normal()).collect();
        let base: Vec<f32> = (0..tokens * 8).map(|_| normal()).collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let (t, c) = (i / cols, i % cols);
                base[t * 8 + c % 8] * (1.0 + (c % 5) as f32) + 0.3 * normal()
            })
            .collect();
        (w, x)
    }

    #[test]
    fn reconstructs_better_than_wanda_at_the_same_sparsity() {
        let (rows, cols, tokens) = (32, 64, 256);
        let (w, x) = layer(rows, cols, tokens, 1);
        let mut stats = ActivationStats::new(cols, true);
        stats.add(&x);
        for sparsity in [0.5, 0.7] {
            let mut sgpt = w.clone();
            sparsegpt(
                "w",
                &mut sgpt,
                rows,
                cols,
                &stats.hessian().unwrap(),
                sparsity,
                None,
            )
            .unwrap();
            let zeros = sgpt.iter().filter(|v| **v == 0.0).count() as f64 / (rows * cols) as f64;
            assert!((zeros - sparsity).abs() < 0.01, "sparsity {zeros}");
            let mut wd = w.clone();
            let mask = prune_mask(
                &wanda(&w, &stats.norms()),
                rows,
                cols,
                &MaskRule::Row(sparsity),
            );
            mask.apply(&mut wd);
            let (e_sgpt, e_wanda) = (
                reconstruction_error(&w, &sgpt, &x, cols),
                reconstruction_error(&w, &wd, &x, cols),
            );
            assert!(
                e_sgpt < e_wanda,
                "at {sparsity}: SparseGPT {e_sgpt} vs Wanda {e_wanda}"
            );
        }
        let mut nm = w.clone();
        sparsegpt(
            "w",
            &mut nm,
            rows,
            cols,
            &stats.hessian().unwrap(),
            0.5,
            Some((2, 4)),
        )
        .unwrap();
        for group in nm.chunks_exact(4) {
            assert!(
                group.iter().filter(|v| **v == 0.0).count() >= 2,
                "{group:?}"
            );
        }
    }
}
