//! The measured allocations besides NeuroAL: OWL from a dense pass's outlier ratios, DLP from its
//! mean Wanda scores, and AlphaPruning from each weight's eigenvalue spectrum.

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
use crate::prune::{wanda, MaskRule, PruneMethod};
use crate::report::AllocationDetail;
use crate::runtime::Runtime;
use std::collections::BTreeMap;

/// Blocks in order, each with the indices of its linears.
pub(super) fn blocks(discovery: &Discovery) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, l) in discovery.linears.iter().enumerate() {
        out.entry(l.block).or_default().push(i);
    }
    out
}

/// Every linear at its block's sparsity, every row alike.
pub(super) fn plan_from_blocks(
    discovery: &Discovery,
    per_block: &BTreeMap<usize, f64>,
) -> SparsityPlan {
    SparsityPlan {
        rules: discovery
            .linears
            .iter()
            .map(|l| MaskRule::Row(per_block[&l.block]))
            .collect(),
    }
}

/// The input-channel norms `‖X_j‖` of every linear (in discovery order) in a dense pass over
/// `windows`, dense outputs fed forward.
pub(super) fn dense_norms(
    model: &OnnxModel,
    discovery: &Discovery,
    runtime: &Runtime,
    windows: &[Vec<i64>],
) -> Result<Vec<Vec<f32>>> {
    let mut dense = SequentialPruner::new(model, discovery, runtime, PruneMethod::Dense, false)?;
    let nothing = SparsityPlan {
        rules: vec![MaskRule::Row(0.0); discovery.linears.len()],
    };
    let pass = dense.run(windows, &nothing, None, true, &Progress::silent())?;
    Ok(pass.alignment.into_iter().map(|a| a.dense).collect())
}

/// OWL (docs/methods.md §3.2): a dense pass over the calibration windows (dense outputs fed forward), the
/// outlier ratio of every block's Wanda scores, and per-block sparsity from the ratios.
pub(crate) fn owl(
    model: &OnnxModel,
    discovery: &Discovery,
    runtime: &Runtime,
    windows: &[Vec<i64>],
    config: &PruneConfig,
) -> Result<(SparsityPlan, AllocationDetail)> {
    let norms = dense_norms(model, discovery, runtime, windows)?;
    let mut ratios = Vec::new();
    for indices in blocks(discovery).values() {
        let mut scores = Vec::new();
        for &i in indices {
            let linear = &discovery.linears[i];
            scores.extend(wanda(&linear.read_out_in(model)?, &norms[i]));
        }
        ratios.push(outlier_ratio(&scores, config.owl_m));
    }
    let sparsity = owl_sparsities(&ratios, config.sparsity, config.owl_lambda);
    let per_block = blocks(discovery)
        .keys()
        .copied()
        .zip(sparsity.iter().copied())
        .collect();
    Ok((
        plan_from_blocks(discovery, &per_block),
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
pub(crate) fn dlp(
    model: &OnnxModel,
    discovery: &Discovery,
    runtime: &Runtime,
    windows: &[Vec<i64>],
    config: &PruneConfig,
) -> Result<(SparsityPlan, AllocationDetail)> {
    let norms = dense_norms(model, discovery, runtime, windows)?;
    let groups = blocks(discovery);
    let mut mean_score = Vec::with_capacity(groups.len());
    for indices in groups.values() {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for &i in indices {
            let linear = &discovery.linears[i];
            let scores = wanda(&linear.read_out_in(model)?, &norms[i]);
            sum += scores.iter().map(|&s| s as f64).sum::<f64>();
            count += scores.len();
        }
        mean_score.push(sum / count.max(1) as f64);
    }
    let sparsity = dlp_sparsities(&mean_score, config.sparsity, config.dlp_alpha);
    let per_block = groups
        .keys()
        .copied()
        .zip(sparsity.iter().copied())
        .collect();
    Ok((
        plan_from_blocks(discovery, &per_block),
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
