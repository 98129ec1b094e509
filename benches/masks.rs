//! CPU mask path: magnitude score, per-row selection and zeroing on LLM-sized matrices, the
//! shapes `neuroal-onnx kernels --check` times the CUDA kernels on (scripts/gpu-check.sh);
//! and RIA's channel order for 2:4 masks (`nm_channel_order`) on SmolLM2's and a 7B model's
//! attention shapes. `cargo bench --bench masks`; the mask throughput is the least traffic the
//! work needs (every weight read, every pruned weight written), as in the GPU table, so
//! criterion's GB/s compare.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use neuroal_onnx::calib::Rng;
use neuroal_onnx::prune::cuda::LLM_SHAPES;
use neuroal_onnx::prune::{magnitude, nm_channel_order, prune_mask, row_prune_count, MaskRule};
use std::hint::black_box;
use std::time::Duration;

/// Deterministic pseudo-random weights in [-1, 1).
fn weights(n: usize) -> Vec<f32> {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()
}

fn masks(c: &mut Criterion) {
    const SPARSITY: f64 = 0.7;
    let mut group = c.benchmark_group("magnitude_row_mask");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for &(rows, cols) in LLM_SHAPES {
        let w = weights(rows * cols);
        let pruned = rows * row_prune_count(cols, SPARSITY);
        group.throughput(Throughput::Bytes(4 * (rows * cols + pruned) as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{rows}x{cols}")),
            &w,
            |b, w| {
                b.iter_batched_ref(
                    || w.clone(),
                    |w| {
                        let scores = magnitude(w);
                        let mask = prune_mask(&scores, rows, cols, &MaskRule::Row(SPARSITY));
                        mask.apply(w);
                        black_box(w.as_ptr());
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

/// `[rows, cols]` of the matrices timed for RIA's channel order: SmolLM2-135M's attention and
/// down projections, and a 7B model's attention projection.
const ORDER_SHAPES: &[(usize, usize)] = &[(576, 576), (576, 1536), (4096, 4096)];

fn channel_order(c: &mut Criterion) {
    let mut group = c.benchmark_group("ria_2_4_channel_order");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for &(rows, cols) in ORDER_SHAPES {
        let scores: Vec<f32> = weights(rows * cols).iter().map(|w| w.abs()).collect();
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{rows}x{cols}")),
            &scores,
            |b, scores| b.iter(|| black_box(nm_channel_order(scores, rows, cols, 2, 4))),
        );
    }
    group.finish();
}

criterion_group!(benches, masks, channel_order);
criterion_main!(benches);
