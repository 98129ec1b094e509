//! Allocation: how sparse each matrix (and, for NeuroAL's row step, each row) should be, given
//! the global target.

pub mod alpha;
pub mod dlp;
pub mod evo;
pub mod neuroal;
pub mod owl;

use crate::error::{Error, Result};
use crate::graph::Discovery;
use crate::prune::MaskRule;
use serde::Serialize;

/// How the global sparsity is distributed (`--top-up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopUp {
    /// Every matrix gets the target sparsity.
    Uniform,
    /// Outlier-weighted layerwise sparsity (Yin et al. 2024).
    Owl,
    /// Heavy-tailed self-regularization based allocation (Lu et al. 2024).
    Alpha,
    /// Training-free mask refinement (Zhang et al. 2024).
    Dsnot,
    /// Neuron alignment search over block and row sparsity (this tool's default).
    Neuroal,
    /// Per-block sparsity from each block's mean Wanda score (Chen et al. 2025).
    Dlp,
    /// Evolutionary search over block sparsity against the dense model's next-token
    /// distributions, started from NeuroAL's block step or from uniform.
    Evo,
}

impl TopUp {
    /// Its name on the command line (`--top-up`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Owl => "owl",
            Self::Alpha => "alpha",
            Self::Dsnot => "dsnot",
            Self::Neuroal => "neuroal",
            Self::Dlp => "dlp",
            Self::Evo => "evo",
        }
    }
}

/// Where the evolutionary search starts (`--evo-start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvoStart {
    /// NeuroAL's block step: its searched λ ramp.
    Neuroal,
    /// Every block at the target.
    Uniform,
}

impl EvoStart {
    /// Its name on the command line (`--evo-start`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Neuroal => "neuroal",
            Self::Uniform => "uniform",
        }
    }
}

/// What the evolutionary search gives a level of its own (`--evo-units`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvoUnits {
    /// Each block: all its matrices at one level.
    Block,
    /// Each block's attention matrices, and its MLP's, apart.
    Group,
}

impl EvoUnits {
    /// Its name on the command line (`--evo-units`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Group => "group",
        }
    }
}

/// Which NeuroAL steps run (`--neuroal-step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NeuroalStep {
    /// Block-wise λ search only.
    Block,
    /// Row-wise λ search only (on uniform blocks).
    Row,
    /// Block search, then row search.
    Both,
}

impl NeuroalStep {
    /// Its name on the command line (`--neuroal-step`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Row => "row",
            Self::Both => "both",
        }
    }
}

/// The sparsity rule of every prunable linear, in the order of [`Discovery::linears`].
#[derive(Clone, Debug, PartialEq)]
pub struct SparsityPlan {
    /// One rule per linear.
    pub rules: Vec<MaskRule>,
}

/// Every linear gets `sparsity` with `"row"` granularity (docs/methods.md §3.1), or the N:M pattern `nm`
/// (whose groups must tile every matrix's input dimension).
pub fn uniform(
    discovery: &Discovery,
    sparsity: f64,
    nm: Option<(usize, usize)>,
) -> Result<SparsityPlan> {
    let rules = discovery
        .linears
        .iter()
        .map(|l| match nm {
            None => Ok(MaskRule::Row(sparsity)),
            Some((n, m)) if l.in_features % m == 0 => Ok(MaskRule::NofM { n, m }),
            Some((n, m)) => Err(Error::invalid(
                "--nm",
                format!(
                    "{n}:{m} needs input widths divisible by {m}, but '{}' ({}) has {} inputs",
                    l.weight.name, l.module, l.in_features
                ),
            )),
        })
        .collect::<Result<_>>()?;
    Ok(SparsityPlan { rules })
}
