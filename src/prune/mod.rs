//! Scores and masks: pure functions over weight matrices in the canonical `[out, in]` layout.

mod channel_sums;
pub mod cuda;
pub mod dsnot;
mod mask;
mod permute;
mod reconstruct;
mod score;
mod sparsegpt;
mod stats;

pub use channel_sums::ChannelSums;
pub use mask::{neuron_prune_count, prune_mask, row_prune_count, MaskRule, RowMask};
pub use permute::{nm_channel_order, permute_columns};
pub use reconstruct::reconstruct;
pub use score::{magnitude, multiflow, ria, wanda};
pub use sparsegpt::sparsegpt;
pub use stats::ActivationStats;

use crate::device::Device;
use serde::Serialize;

/// The base score that ranks weights (`--prune-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// |W|, per output row; needs no data.
    Magnitude,
    /// |W| · ‖X_j‖ (Sun et al. 2023).
    Wanda,
    /// Optimal-brain-surgeon reconstruction (Frantar & Alistarh 2023).
    Sparsegpt,
    /// |W| · row importance · column importance.
    Multiflow,
    /// Relative importance (|W|'s share of its row and its column) · ‖X_j‖^0.5 (Zhang et al. 2024).
    Ria,
    /// Nothing pruned: the dense baseline, written and evaluated like a pruned model.
    Dense,
}

impl PruneMethod {
    /// Its name on the command line (`--prune-method`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Magnitude => "magnitude",
            Self::Wanda => "wanda",
            Self::Sparsegpt => "sparsegpt",
            Self::Multiflow => "multiflow",
            Self::Ria => "ria",
            Self::Dense => "dense",
        }
    }

    /// Whether the method needs calibration activations.
    pub fn needs_calibration(self) -> bool {
        matches!(
            self,
            Self::Wanda | Self::Sparsegpt | Self::Multiflow | Self::Ria
        )
    }
}

/// Where magnitude and Wanda masks are computed: the CPU path (the reference) or the CUDA
/// kernels, which prune exactly the same entries.
pub enum Masker {
    /// [`prune_mask`] with rayon.
    Cpu,
    /// The kernels of `kernels/masks.cu`.
    Cuda(cuda::CudaMasker),
}

impl Masker {
    /// The masker for `--device`: `auto` takes the CUDA kernels when they load and else the CPU,
    /// with the reason; `cpu` the CPU; `cuda` the kernels, or an error saying why not.
    pub fn select(device: Device) -> crate::Result<(Masker, Option<String>)> {
        match device {
            Device::Cpu => Ok((Masker::Cpu, None)),
            Device::Auto => Ok(match cuda::CudaMasker::new() {
                Ok(m) => (Masker::Cuda(m), None),
                Err(why) => (Masker::Cpu, Some(why)),
            }),
            Device::Cuda => cuda::CudaMasker::new()
                .map(|m| (Masker::Cuda(m), None))
                .map_err(|why| {
                    crate::Error::invalid(
                        "--device",
                        format!("cuda: the CUDA mask kernels cannot be used: {why}"),
                    )
                }),
        }
    }
}

/// The score of every weight of a row-major `[rows, cols]` matrix under a score-based method
/// (magnitude, Wanda, multiflow, RIA), from the channel norms `‖X_j‖` of its input where the
/// method reads them; `None` for the methods whose masks no score decides (SparseGPT, dense).
pub fn score_matrix(method: PruneMethod, weights: &[f32], norms: &[f32]) -> Option<Vec<f32>> {
    match method {
        PruneMethod::Magnitude => Some(magnitude(weights)),
        PruneMethod::Wanda => Some(wanda(weights, norms)),
        PruneMethod::Multiflow => Some(multiflow(weights, norms)),
        PruneMethod::Ria => Some(ria(weights, norms)),
        PruneMethod::Sparsegpt | PruneMethod::Dense => None,
    }
}

/// Prunes the row-major `[rows, cols]` matrix `weights` in place with `method` under `rule`.
/// `stats` are the statistics of the matrix's input (required by the calibrated methods and by
/// DSnoT); `dsnot` refines the score-based mask with DSnoT; `name` names the tensor in errors.
/// SparseGPT takes the rule's mean sparsity (or its N:M pattern) and ignores per-row budgets, as
/// the reference does. `masker` computes the magnitude and Wanda masks (without DSnoT); the
/// other methods stay on the CPU.
///
/// Returns the order of input channels whose consecutive groups the N:M pattern follows, when
/// it is not the stored order: RIA with N:M takes its groups in the channel order of
/// [`nm_channel_order`], so `weights` (still in the stored order) is N:M only once its columns
/// are put in that order.
#[allow(clippy::too_many_arguments)]
pub fn prune_matrix(
    method: PruneMethod,
    name: &str,
    weights: &mut [f32],
    rows: usize,
    cols: usize,
    stats: Option<&ActivationStats>,
    rule: &MaskRule,
    dsnot: bool,
    masker: &Masker,
) -> crate::Result<Option<Vec<u32>>> {
    let needs_stats = || {
        stats.ok_or_else(|| crate::Error::tensor(name, "no calibration statistics were collected"))
    };
    if let (Masker::Cuda(gpu), PruneMethod::Magnitude | PruneMethod::Wanda, false) =
        (masker, method, dsnot)
    {
        let norms = match method {
            PruneMethod::Wanda => Some(needs_stats()?.norms()),
            _ => None,
        };
        gpu.prune(weights, rows, cols, norms.as_deref(), rule)
            .map_err(|e| crate::Error::tensor(name, format!("CUDA mask kernel: {e}")))?;
        return Ok(None);
    }
    let scores = match method {
        PruneMethod::Dense => return Ok(None),
        PruneMethod::Magnitude => magnitude(weights),
        PruneMethod::Wanda | PruneMethod::Multiflow | PruneMethod::Ria => {
            score_matrix(method, weights, &needs_stats()?.norms())
                .ok_or_else(|| crate::Error::internal("a score-based method gave no score"))?
        }
        PruneMethod::Sparsegpt => {
            let hessian = needs_stats()?
                .hessian()
                .ok_or_else(|| crate::Error::tensor(name, "no Hessian was accumulated"))?;
            let nm = match rule {
                MaskRule::NofM { n, m } => Some((*n, *m)),
                _ => None,
            };
            sparsegpt(
                name,
                weights,
                rows,
                cols,
                &hessian,
                rule.mean_sparsity(rows),
                nm,
            )?;
            return Ok(None);
        }
    };
    let order = match (method, rule) {
        (PruneMethod::Ria, MaskRule::NofM { n, m }) => {
            nm_channel_order(&scores, rows, cols, *n, *m)
        }
        _ => None,
    };
    let mut mask = match &order {
        Some(order) => in_channel_order(&scores, rows, cols, rule, order),
        None => prune_mask(&scores, rows, cols, rule),
    };
    if dsnot {
        // The initial mask follows the base score; the candidates to prune are ordered by
        // Wanda's score whatever the base method, as in the reference.
        let s = needs_stats()?;
        let ranking = match method {
            PruneMethod::Wanda => scores,
            _ => wanda(weights, &s.norms()),
        };
        dsnot::refine(
            weights,
            &ranking,
            &s.window_mean(),
            &s.variance(),
            &mut mask,
        );
    }
    mask.apply(weights);
    Ok(order)
}

/// The mask of `scores` under `rule` taken with the columns in `order`, in the stored order.
fn in_channel_order(
    scores: &[f32],
    rows: usize,
    cols: usize,
    rule: &MaskRule,
    order: &[u32],
) -> RowMask {
    let reordered = prune_mask(
        &permute_columns(scores, rows, cols, order),
        rows,
        cols,
        rule,
    );
    let mut pruned = vec![false; rows * cols];
    for (to, from) in pruned.chunks_mut(cols).zip(reordered.pruned.chunks(cols)) {
        for (&j, &p) in order.iter().zip(from) {
            to[j as usize] = p;
        }
    }
    RowMask { rows, cols, pruned }
}
