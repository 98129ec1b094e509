//! The CUDA mask path: `kernels/*.cu` compiled at run time by NVRTC ([`nvrtc`]) and launched
//! through cudarc by the masker ([`masker`]). The kernels prune exactly what
//! [`prune_mask`](super::prune_mask) prunes (kernels/README.md). Nothing here panics when there
//! is no GPU, driver or NVRTC: every entry point checks that the libraries load before touching
//! them and reports why not as a `String`.

pub mod masker;
pub mod nvrtc;

pub use masker::{random_weights, row_counts, CudaMasker, Ties, TIMED_RUNS, WARMUP_RUNS};
pub use nvrtc::{compile_ptx_all, resource_report, KernelSource, PTX_ARCHS, SOURCES};

/// Linear shapes `[out, in]` of LLaMA-7B, then of SmolLM2-135M: `neuroal-onnx kernels --check`
/// and the mask benchmark (benches/masks.rs) run on them.
pub const LLM_SHAPES: &[(usize, usize)] = &[
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
    (576, 576),
    (1536, 576),
    (576, 1536),
];
