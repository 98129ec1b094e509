//! Evaluation arithmetic: one window's perplexity terms, KL divergence and top-1 agreement from
//! the dense and the pruned model's logits, at Gemma 3's 262,144-token vocabulary. `fused` is what
//! the tool runs (`neuroal_onnx::eval::compare_window`); `textbook` is the same quantities in f64
//! with one `exp` per term, a row at a time, as a baseline. `cargo bench --bench evaluation`;
//! throughput is the logits read (both models).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, ArrayView2};
use neuroal_onnx::calib::Rng;
use neuroal_onnx::eval::compare_window;
use std::hint::black_box;
use std::time::Duration;

const VOCAB: usize = 262_144;
const POSITIONS: usize = 32;

/// Logits in [-15, 15) for the dense model, and the same plus noise in [-1, 1) for the pruned one.
fn logits() -> (Array2<f32>, Array2<f32>, Vec<i64>) {
    let mut rng = Rng::new(0x5EED);
    let dense =
        Array2::from_shape_simple_fn((POSITIONS, VOCAB), || (rng.unit() * 30.0 - 15.0) as f32);
    let pruned = dense.mapv(|v| v + (rng.unit() * 2.0 - 1.0) as f32);
    let ids = (0..POSITIONS as i64)
        .map(|t| t * 7919 % VOCAB as i64)
        .collect();
    (dense, pruned, ids)
}

/// The textbook formulas: log-softmax of each row in f64, then the sums (both models' losses
/// added together, KL, top-1 matches).
fn textbook(dense: ArrayView2<f32>, pruned: ArrayView2<f32>, ids: &[i64]) -> (f64, f64, usize) {
    let log_softmax = |x: &[f32]| -> Vec<f64> {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        x.iter().map(|&v| v as f64 - lse).collect()
    };
    let (mut nll, mut kl, mut same) = (0.0, 0.0, 0);
    for (t, (p, q)) in dense.rows().into_iter().zip(pruned.rows()).enumerate() {
        let (lp, lq) = (
            log_softmax(p.as_slice().unwrap()),
            log_softmax(q.as_slice().unwrap()),
        );
        if let Some(&next) = ids.get(t + 1) {
            nll -= lp[next as usize] + lq[next as usize];
        }
        kl += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        let top = |l: &[f64]| {
            l.iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > l[b] { i } else { b })
        };
        same += usize::from(top(&lp) == top(&lq));
    }
    (nll, kl, same)
}

fn window_comparison(c: &mut Criterion) {
    let (dense, pruned, ids) = logits();
    let mut group = c.benchmark_group("window_comparison");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes((2 * POSITIONS * VOCAB * 4) as u64));
    let shape = format!("{POSITIONS}x{VOCAB}");
    group.bench_with_input(BenchmarkId::new("fused", &shape), &ids, |b, ids| {
        b.iter(|| black_box(compare_window(dense.view(), pruned.view(), ids)))
    });
    group.bench_with_input(BenchmarkId::new("textbook", &shape), &ids, |b, ids| {
        b.iter(|| black_box(textbook(dense.view(), pruned.view(), ids)))
    });
    group.finish();
}

criterion_group!(benches, window_comparison);
criterion_main!(benches);
