//! What the zeros give a deployment. Zeros stored in a dense tensor change neither the file size
//! nor the latency by themselves; they pay off through compression (storage, download) and
//! through sparse kernels, of which 2:4 on sparse tensor cores is the widespread one.

use super::DeploymentInfo;
use crate::error::{Error, Result};
use crate::graph::Discovery;
use crate::onnx::{OnnxModel, TensorKey};
use rayon::prelude::*;
use std::collections::HashMap;

/// zstd level used to measure compressibility (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// Compressed sizes of the prunable weights before and after pruning; `replacements` holds the
/// new stored bytes of every weight that changed.
pub fn deployment_info(
    model: &OnnxModel,
    discovery: &Discovery,
    replacements: &HashMap<TensorKey, Vec<u8>>,
    nm: Option<(usize, usize)>,
) -> Result<DeploymentInfo> {
    let sizes: Vec<(u64, u64, u64)> = discovery
        .linears
        .par_iter()
        .map(|l| {
            let tensor = model
                .initializer(&l.weight)
                .ok_or_else(|| Error::tensor(&l.weight.name, "initializer not found"))?;
            let dense = model.tensor_bytes(&l.weight.graph, tensor)?;
            let pruned = replacements
                .get(&l.weight)
                .map(Vec::as_slice)
                .unwrap_or(&dense);
            Ok((
                dense.len() as u64,
                compressed_len(&dense, &l.weight.name)?,
                compressed_len(pruned, &l.weight.name)?,
            ))
        })
        .collect::<Result<_>>()?;
    let total = |f: fn(&(u64, u64, u64)) -> u64| sizes.iter().map(f).sum::<u64>();
    let mut note = "Zeros stored in dense tensors change neither the file size nor the latency by themselves. \
                    They make the weights compress better (see the zstd sizes), and sparse kernels can skip them."
        .to_string();
    note += match nm {
        Some((2, 4)) => " This model has the 2:4 pattern that sparse tensor cores (NVIDIA Ampere and later) accelerate.",
        _ => " For a speed-up on GPUs, prune with --nm 2:4: sparse tensor cores (NVIDIA Ampere and later) accelerate that pattern.",
    };
    Ok(DeploymentInfo {
        note,
        prunable_weight_bytes: total(|s| s.0),
        zstd_dense_bytes: total(|s| s.1),
        zstd_pruned_bytes: total(|s| s.2),
        zstd_level: ZSTD_LEVEL,
    })
}

fn compressed_len(bytes: &[u8], name: &str) -> Result<u64> {
    zstd::bulk::compress(bytes, ZSTD_LEVEL)
        .map(|c| c.len() as u64)
        .map_err(|e| Error::tensor(name, format!("zstd failed: {e}")))
}
