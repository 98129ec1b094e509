//! The model's structure: which weights are prunable linears, which block and role each belongs
//! to, and which weights are left alone and why.

mod discover;
mod naming;
mod partition;
mod weights;

pub use discover::{discover, Discovery, Exclusion, ExclusionReason, Layout, Linear, LinearNode};
pub use naming::{module_path, ModulePath};
pub use partition::{Partition, Stage, StageKind, StageModel, StageProbe, FED_BYTES};
