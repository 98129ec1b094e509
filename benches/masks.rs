//! CPU mask path: magnitude score, per-row selection and zeroing on LLM-sized matrices.
//! `cargo bench --bench masks`; throughput is reported in weights per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use neuroal_onnx::prune::{magnitude, prune_mask, MaskRule};
use std::hint::black_box;

/// Deterministic pseudo-random weights in [-1, 1).
fn weights(n: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn masks(c: &mut Criterion) {
    let mut group = c.benchmark_group("magnitude_row_mask");
    group.sample_size(10);
    // SmolLM2-135M's shapes, then LLaMA-7B's ([out, in]).
    for (rows, cols) in [
        (576, 576),
        (1536, 576),
        (576, 1536),
        (4096, 4096),
        (11008, 4096),
    ] {
        let w = weights(rows * cols);
        group.throughput(Throughput::Elements((rows * cols) as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{rows}x{cols}")),
            &w,
            |b, w| {
                b.iter(|| {
                    let mut w = w.clone();
                    let scores = magnitude(&w);
                    let mask = prune_mask(&scores, rows, cols, &MaskRule::Row(0.7));
                    mask.apply(&mut w);
                    black_box(w)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, masks);
criterion_main!(benches);
