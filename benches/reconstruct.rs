//! `--reconstruct`'s re-fit (docs/methods.md §5.1: the OBS sweep with the mask held fixed, then
//! conjugate gradients) against ADMM on the same fixed mask (Boža 2024, arXiv 2401.02938), the
//! other update the method could have used. The matrix has SmolLM2's MLP down projection's shape
//! (576 × 1536). Its calibration inputs are synthetic and correlated: a low-rank signal, noise,
//! and a few outlier channels. Wanda's mask at 70% is fixed. `cargo bench --bench reconstruct`
//! prints the error each update reaches, then criterion times it.
//!
//! The error is `Σ_rows (w − ŵ) H (w − ŵ)ᵀ` on the undampened `H = 2/N Σ XᵀX`, relative to
//! masking alone (no update). Both updates minimise it on the 1%-dampened `H` that SparseGPT uses.
//! The optimum of that problem, solved row by row (a Cholesky solve on the kept columns), is
//! printed as the floor. ADMM here follows the paper's iteration
//! `W ← (W_dense H + ρ(Z − U))(H + ρI)⁻¹`, `Z ← mask(W + U)`, `U ← U + W − Z`, and returns `Z`.
//! ρ starts at a tenth of H's mean diagonal and grows 1.3 times every 3 iterations, so `Z` and
//! `W` meet.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use neuroal_onnx::calib::Rng;
use neuroal_onnx::prune::{prune_mask, reconstruct, wanda, MaskRule};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROWS: usize = 576;
const COLS: usize = 1536;
const TOKENS: usize = 4096;
const SPARSITY: f64 = 0.7;
/// SparseGPT's dampening, as `--reconstruct` applies it: a fraction of the mean diagonal.
const PERCDAMP: f64 = 0.01;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut Rng) -> f64 {
    let (u, v) = (rng.unit().max(1e-300), rng.unit());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One matrix and its calibration statistics.
struct Layer {
    dense: Vec<f32>,
    /// The dense weights with Wanda's mask applied.
    masked: Vec<f32>,
    /// `2/N Σ XᵀX`, row-major.
    hessian: Vec<f64>,
}

/// Inputs `X = S·M + noise`, with a 64-dimensional signal `S`, and every 97th channel scaled 20
/// times as an outlier. Weights are normal with standard deviation 0.02.
fn layer() -> Layer {
    let mut rng = Rng::new(0x005E_ED0F_AD44);
    const RANK: usize = 64;
    let mixing = Mat::<f64>::from_fn(RANK, COLS, |_, _| normal(&mut rng));
    let signal = Mat::<f64>::from_fn(TOKENS, RANK, |_, _| normal(&mut rng));
    let mut x = &signal * &mixing;
    for t in 0..TOKENS {
        for c in 0..COLS {
            x[(t, c)] += 0.5 * normal(&mut rng);
            if c % 97 == 0 {
                x[(t, c)] *= 20.0;
            }
        }
    }
    let mut h = Mat::<f64>::zeros(COLS, COLS);
    matmul(
        h.as_mut(),
        Accum::Replace,
        x.transpose(),
        x.as_ref(),
        2.0 / TOKENS as f64,
        Par::rayon(0),
    );
    let hessian: Vec<f64> = (0..COLS * COLS).map(|i| h[(i / COLS, i % COLS)]).collect();
    let dense: Vec<f32> = (0..ROWS * COLS)
        .map(|_| (0.02 * normal(&mut rng)) as f32)
        .collect();
    let norms: Vec<f32> = (0..COLS)
        .map(|c| (h[(c, c)] * TOKENS as f64 / 2.0).sqrt() as f32)
        .collect();
    let mask = prune_mask(&wanda(&dense, &norms), ROWS, COLS, &MaskRule::Row(SPARSITY));
    let mut masked = dense.clone();
    mask.apply(&mut masked);
    Layer {
        dense,
        masked,
        hessian,
    }
}

/// `H` with SparseGPT's dampening on its diagonal.
fn dampened(hessian: &[f64]) -> Mat<f64> {
    let mut h = Mat::<f64>::from_fn(COLS, COLS, |i, j| hessian[i * COLS + j]);
    let damp = PERCDAMP * (0..COLS).map(|j| h[(j, j)]).sum::<f64>() / COLS as f64;
    for j in 0..COLS {
        h[(j, j)] += damp;
    }
    h
}

/// `Σ_rows (w − ŵ) H (w − ŵ)ᵀ` on the undampened `H`.
fn error(layer: &Layer, fitted: &[f32]) -> f64 {
    let d = Mat::<f64>::from_fn(ROWS, COLS, |r, c| {
        (layer.dense[r * COLS + c] - fitted[r * COLS + c]) as f64
    });
    let h = Mat::<f64>::from_fn(COLS, COLS, |i, j| layer.hessian[i * COLS + j]);
    let dh = &d * &h;
    (0..ROWS)
        .map(|r| (0..COLS).map(|c| d[(r, c)] * dh[(r, c)]).sum::<f64>())
        .sum()
}

/// The tool's re-fit.
fn refit(layer: &Layer) -> Vec<f32> {
    let mut out = layer.masked.clone();
    reconstruct("bench", &layer.dense, &mut out, ROWS, COLS, &layer.hessian).unwrap();
    out
}

/// ADMM with the mask fixed, `iterations` steps; returns `Z`.
fn admm(layer: &Layer, iterations: usize) -> Vec<f32> {
    let h = dampened(&layer.hessian);
    let kept = Mat::<f64>::from_fn(ROWS, COLS, |r, c| {
        f64::from(u8::from(layer.masked[r * COLS + c] != 0.0))
    });
    let w0 = Mat::<f64>::from_fn(ROWS, COLS, |r, c| layer.dense[r * COLS + c] as f64);
    let mut target = Mat::<f64>::zeros(ROWS, COLS);
    matmul(
        target.as_mut(),
        Accum::Replace,
        w0.as_ref(),
        h.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let mut z = Mat::<f64>::from_fn(ROWS, COLS, |r, c| w0[(r, c)] * kept[(r, c)]);
    let mut u = Mat::<f64>::zeros(ROWS, COLS);
    let mean_diagonal = (0..COLS).map(|j| h[(j, j)]).sum::<f64>() / COLS as f64;
    let mut factor = None;
    for k in 0..iterations {
        let rho = 0.1 * mean_diagonal * 1.3f64.powi((k / 3) as i32);
        if k % 3 == 0 {
            let shifted = Mat::<f64>::from_fn(COLS, COLS, |i, j| {
                h[(i, j)] + if i == j { rho } else { 0.0 }
            });
            factor = Some(
                shifted
                    .llt(Side::Lower)
                    .expect("H + ρI is positive definite"),
            );
        }
        let llt = factor.as_ref().unwrap();
        // (H + ρI) Wᵀ = (W_dense H + ρ(Z − U))ᵀ, H symmetric.
        let rhs = Mat::<f64>::from_fn(COLS, ROWS, |c, r| {
            target[(r, c)] + rho * (z[(r, c)] - u[(r, c)])
        });
        let w = faer::prelude::Solve::solve(llt, &rhs);
        for r in 0..ROWS {
            for c in 0..COLS {
                let v = w[(c, r)] + u[(r, c)];
                z[(r, c)] = v * kept[(r, c)];
                u[(r, c)] = v - z[(r, c)];
            }
        }
    }
    (0..ROWS * COLS)
        .map(|i| z[(i / COLS, i % COLS)] as f32)
        .collect()
}

/// The optimum on the dampened `H`: each row's kept weights solve `H_KK ŵ_K = (H w)_K`.
fn optimum(layer: &Layer) -> Vec<f32> {
    let h = dampened(&layer.hessian);
    let mut out = vec![0.0f32; ROWS * COLS];
    for r in 0..ROWS {
        let row = &layer.masked[r * COLS..(r + 1) * COLS];
        let kept: Vec<usize> = (0..COLS).filter(|&c| row[c] != 0.0).collect();
        let w = Mat::<f64>::from_fn(COLS, 1, |c, _| layer.dense[r * COLS + c] as f64);
        let hw = &h * &w;
        let h_kk = Mat::<f64>::from_fn(kept.len(), kept.len(), |i, j| h[(kept[i], kept[j])]);
        let rhs = Mat::<f64>::from_fn(kept.len(), 1, |i, _| hw[(kept[i], 0)]);
        let llt = h_kk.llt(Side::Lower).expect("H_KK is positive definite");
        let solved = faer::prelude::Solve::solve(&llt, &rhs);
        for (i, &c) in kept.iter().enumerate() {
            out[r * COLS + c] = solved[(i, 0)] as f32;
        }
    }
    out
}

const ADMM_ITERATIONS: [usize; 3] = [10, 30, 100];

fn reconstruction(c: &mut Criterion) {
    let layer = layer();
    let masked = error(&layer, &layer.masked);
    eprintln!("{ROWS} × {COLS}, Wanda's mask at {SPARSITY}, {TOKENS} calibration tokens");
    let clock = Instant::now();
    let floor = error(&layer, &optimum(&layer));
    eprintln!(
        "{:<34} error {:.5} of masking alone   {:.2} s",
        "optimum (row-wise Cholesky)",
        floor / masked,
        clock.elapsed().as_secs_f64()
    );
    let report = |name: &str, fitted: &[f32], seconds: f64| {
        let e = error(&layer, fitted);
        eprintln!(
            "{name:<34} error {:.5} of masking alone   {:.2} s   {:+.1}% over the optimum",
            e / masked,
            seconds,
            100.0 * (e / floor - 1.0)
        );
    };
    let clock = Instant::now();
    let ours = refit(&layer);
    report(
        "--reconstruct (OBS sweep + CG)",
        &ours,
        clock.elapsed().as_secs_f64(),
    );
    for iterations in ADMM_ITERATIONS {
        let clock = Instant::now();
        let z = admm(&layer, iterations);
        report(
            &format!("ADMM, {iterations} iterations"),
            &z,
            clock.elapsed().as_secs_f64(),
        );
    }

    let mut group = c.benchmark_group("reconstruction");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let shape = format!("{ROWS}x{COLS}");
    group.bench_function(BenchmarkId::new("obs_sweep_and_cg", &shape), |b| {
        b.iter(|| black_box(refit(&layer)))
    });
    for iterations in ADMM_ITERATIONS {
        group.bench_function(
            BenchmarkId::new(format!("admm_{iterations}"), &shape),
            |b| b.iter(|| black_box(admm(&layer, iterations))),
        );
    }
    group.finish();
}

criterion_group!(benches, reconstruction);
criterion_main!(benches);
