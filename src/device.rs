//! Where the work runs: the device choice that ONNX Runtime's sessions ([`crate::runtime`]) and
//! the mask kernels ([`crate::prune::Masker`]) both follow.

use serde::Serialize;

/// Where ONNX Runtime should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CUDA execution provider when it loads, else the CPU (with one line saying so).
    Auto,
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider; an error when it cannot be used.
    Cuda,
}

impl Device {
    /// Its name on the command line (`--device`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}
