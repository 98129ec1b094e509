//! What the zeros give a deployment. Zeros stored in a dense tensor change neither the file size
//! nor the latency by themselves; they pay off through compression (storage, download) and
//! through sparse kernels, of which 2:4 on sparse tensor cores is the widespread one.

use super::DeploymentInfo;
use crate::error::{Error, Result};

/// zstd level used to measure compressibility (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// One prunable matrix's stored size and its zstd sizes before and after pruning.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressedSizes {
    /// Stored bytes (the same dense and pruned).
    pub stored: u64,
    /// zstd of the dense bytes.
    pub dense: u64,
    /// zstd of the pruned bytes.
    pub pruned: u64,
}

impl CompressedSizes {
    /// Compresses a matrix's `dense` and `pruned` stored bytes (both at once, on two threads);
    /// `pruned` is `None` when pruning left the matrix unchanged.
    pub fn measure(name: &str, dense: &[u8], pruned: Option<&[u8]>) -> Result<Self> {
        let (dense_len, pruned_len) = match pruned {
            Some(p) => {
                let (d, p) =
                    rayon::join(|| compressed_len(dense, name), || compressed_len(p, name));
                (d?, p?)
            }
            None => {
                let d = compressed_len(dense, name)?;
                (d, d)
            }
        };
        Ok(Self {
            stored: dense.len() as u64,
            dense: dense_len,
            pruned: pruned_len,
        })
    }
}

/// What the zeros of the prunable weights give a deployment, from each matrix's sizes, the N:M
/// pattern if any, and how many matrices are stored with their inputs reordered.
pub fn deployment_info(
    sizes: &[CompressedSizes],
    nm: Option<(usize, usize)>,
    reordered: usize,
) -> DeploymentInfo {
    let total = |f: fn(&CompressedSizes) -> u64| sizes.iter().map(f).sum::<u64>();
    let mut note = "Zeros stored in dense tensors change neither the file size nor the latency by themselves. \
                    They make the weights compress better (see the zstd sizes), and sparse kernels can skip them."
        .to_string();
    note += match nm {
        Some((2, 4)) => " This model has the 2:4 pattern that sparse tensor cores (NVIDIA Ampere and later) accelerate.",
        _ => " For a speed-up on GPUs, prune with --nm 2:4: sparse tensor cores (NVIDIA Ampere and later) accelerate that pattern.",
    };
    if reordered > 0 {
        note += &format!(
            " {reordered} of the matrices are stored with their inputs reordered (RIA's channel permutation), so that each is N:M in its own layout; a Gather before each of their linears reorders its input to match (sparsity.per_matrix[].input_order)."
        );
    }
    DeploymentInfo {
        note,
        prunable_weight_bytes: total(|s| s.stored),
        zstd_dense_bytes: total(|s| s.dense),
        zstd_pruned_bytes: total(|s| s.pruned),
        zstd_level: ZSTD_LEVEL,
    }
}

fn compressed_len(bytes: &[u8], name: &str) -> Result<u64> {
    zstd::bulk::compress(bytes, ZSTD_LEVEL)
        .map(|c| c.len() as u64)
        .map_err(|e| Error::tensor(name, format!("zstd failed: {e}")))
}
