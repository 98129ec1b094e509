//! The measured allocations besides NeuroAL: OWL from a dense pass's outlier ratios, DLP from its
//! mean Wanda scores, and AlphaPruning from each weight's eigenvalue spectrum.

use super::carry::SpillPolicy;
use super::sequential::SequentialPruner;
use super::PruneConfig;
use crate::allocate::alpha::{alpha_sparsities, hill_alpha};
use crate::allocate::dlp::dlp_sparsities;
use crate::allocate::owl::{outlier_ratio, owl_sparsities};
use crate::allocate::SparsityPlan;
use crate::error::{Error, Result};
use crate::graph::Discovery;
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::prune::{wanda, MaskRule, Masker, PruneMethod};
use crate::report::AllocationDetail;
use crate::runtime::Runtime;
use std::collections::BTreeMap;

/// What a measured allocation (OWL, DLP, NeuroAL, evo) runs on: the model and its linears, the
/// job's runtime and masker, the calibration windows, the job's settings, where hidden states
/// spill beyond the memory budget, and where progress goes.
#[derive(Clone, Copy)]
pub(super) struct AllocationInputs<'a> {
    pub model: &'a OnnxModel,
    pub discovery: &'a Discovery,
    pub runtime: &'a Runtime,
    pub masker: &'a Masker,
    pub windows: &'a [Vec<i64>],
    pub config: &'a PruneConfig,
    pub spill: Option<&'a SpillPolicy>,
    pub progress: &'a Progress,
}

/// Blocks in order, each with the indices of its linears.
pub(super) fn blocks(discovery: &Discovery) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, l) in discovery.linears.iter().enumerate() {
        out.entry(l.block).or_default().push(i);
    }
    out
}

/// Every linear's level from its block's (`per_block` in block order).
pub(super) fn per_linear_levels(discovery: &Discovery, per_block: &[f64]) -> Vec<f64> {
    let level: BTreeMap<usize, f64> = blocks(discovery)
        .into_keys()
        .zip(per_block.iter().copied())
        .collect();
    discovery.linears.iter().map(|l| level[&l.block]).collect()
}

/// Every linear at its block's sparsity (`per_block` in block order), every row alike.
pub(super) fn plan_from_blocks(discovery: &Discovery, per_block: &[f64]) -> SparsityPlan {
    plan_from_levels(&per_linear_levels(discovery, per_block))
}

/// Every linear at its level in `per_linear` (discovery order), every row alike.
pub(super) fn plan_from_levels(per_linear: &[f64]) -> SparsityPlan {
    SparsityPlan {
        rules: per_linear.iter().copied().map(MaskRule::Row).collect(),
    }
}

/// One value per block, in block order: `reduce` of the Wanda scores of the block's matrices (one
/// vector per matrix) on the norms of a dense pass over the calibration windows.
fn per_block_wanda(
    inputs: &AllocationInputs,
    reduce: impl Fn(&[Vec<f32>]) -> f64,
) -> Result<Vec<f64>> {
    let (model, discovery) = (inputs.model, inputs.discovery);
    let norms = dense_norms(inputs)?;
    blocks(discovery)
        .values()
        .map(|indices| {
            let scores = indices
                .iter()
                .map(|&i| Ok(wanda(&discovery.linears[i].read_out_in(model)?, &norms[i])))
                .collect::<Result<Vec<_>>>()?;
            Ok(reduce(&scores))
        })
        .collect()
}

/// The input-channel norms `‖X_j‖` of every linear (in discovery order) in a dense pass over the
/// calibration windows, dense outputs fed forward.
pub(super) fn dense_norms(inputs: &AllocationInputs) -> Result<Vec<Vec<f32>>> {
    let (model, discovery) = (inputs.model, inputs.discovery);
    let mut dense =
        SequentialPruner::new(model, discovery, inputs.runtime, PruneMethod::Dense, false)?
            .spill_beyond(inputs.spill.cloned());
    let nothing = SparsityPlan {
        rules: vec![MaskRule::Row(0.0); discovery.linears.len()],
    };
    let pass = dense.run(inputs.windows, &nothing, None, true, &Progress::silent())?;
    Ok(pass.alignment.into_iter().map(|a| a.dense).collect())
}

/// OWL (docs/methods.md §3.2): a dense pass over the calibration windows (dense outputs fed forward), the
/// outlier ratio of every block's Wanda scores, and per-block sparsity from the ratios.
pub(super) fn owl(inputs: &AllocationInputs) -> Result<(SparsityPlan, AllocationDetail)> {
    let config = inputs.config;
    let ratios = per_block_wanda(inputs, |scores| {
        outlier_ratio(&scores.concat(), config.owl_m)
    })?;
    let sparsity = owl_sparsities(&ratios, config.sparsity, config.owl_lambda);
    Ok((
        plan_from_blocks(inputs.discovery, &sparsity),
        AllocationDetail::Owl {
            m: config.owl_m,
            lambda: config.owl_lambda,
            outlier_ratio: ratios,
            sparsity,
        },
    ))
}

/// DLP (docs/methods.md §3.5): a dense pass over the calibration windows, the mean Wanda score of
/// every block's weights, and per-block sparsity from them.
pub(super) fn dlp(inputs: &AllocationInputs) -> Result<(SparsityPlan, AllocationDetail)> {
    let config = inputs.config;
    let mean_score = per_block_wanda(inputs, |scores| {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for matrix in scores {
            sum += matrix.iter().map(|&s| s as f64).sum::<f64>();
            count += matrix.len();
        }
        sum / count.max(1) as f64
    })?;
    let sparsity = dlp_sparsities(&mean_score, config.sparsity, config.dlp_alpha);
    Ok((
        plan_from_blocks(inputs.discovery, &sparsity),
        AllocationDetail::Dlp {
            alpha: config.dlp_alpha,
            mean_score,
            sparsity,
        },
    ))
}

/// AlphaPruning (docs/methods.md §3.4): α of every matrix from its squared singular values, averaged per
/// block, mapped to sparsities around the target with the parameter-weighted mean kept.
pub(crate) fn alpha(
    model: &OnnxModel,
    discovery: &Discovery,
    config: &PruneConfig,
) -> Result<(SparsityPlan, AllocationDetail)> {
    let mut alphas = Vec::with_capacity(discovery.linears.len());
    for linear in &discovery.linears {
        let w = linear.read_out_in(model)?;
        let m = faer::Mat::<f64>::from_fn(linear.out_features, linear.in_features, |r, c| {
            w[r * linear.in_features + c] as f64
        });
        let singular = m.singular_values().map_err(|e| {
            Error::tensor(
                &linear.weight.name,
                format!("singular values did not converge: {e:?}"),
            )
        })?;
        let mut eigs: Vec<f64> = singular.iter().map(|s| s * s).collect();
        eigs.sort_by(f64::total_cmp);
        alphas.push(hill_alpha(&eigs));
    }
    let groups = blocks(discovery);
    let block_alpha: Vec<f64> = groups
        .values()
        .map(|idx| idx.iter().map(|&i| alphas[i]).sum::<f64>() / idx.len() as f64)
        .collect();
    let per_linear_alpha: Vec<f64> = discovery
        .linears
        .iter()
        .map(|l| block_alpha[groups.keys().position(|b| *b == l.block).unwrap_or(0)])
        .collect();
    let params: Vec<usize> = discovery.linears.iter().map(|l| l.numel()).collect();
    let sparsity = alpha_sparsities(
        &per_linear_alpha,
        &params,
        config.sparsity,
        config.alpha_epsilon,
    );
    let per_block_sparsity: Vec<f64> = groups.values().map(|idx| sparsity[idx[0]]).collect();
    let plan = SparsityPlan {
        rules: sparsity.iter().map(|&s| MaskRule::Row(s)).collect(),
    };
    Ok((
        plan,
        AllocationDetail::Alpha {
            epsilon: config.alpha_epsilon,
            alpha: block_alpha,
            sparsity: per_block_sparsity,
        },
    ))
}
