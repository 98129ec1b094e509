//! Where the work runs and what it may use: the device choice that ONNX Runtime's sessions
//! ([`crate::runtime`]) and the mask kernels ([`crate::prune::Masker`]) both follow, and the
//! job's memory budget.

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

/// How much memory a job may use, and where that figure came from (`--memory-budget`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MemoryBudget {
    /// The budget in MiB.
    #[schemars(range(min = 0.0))]
    pub mib: f64,
    /// `flag` (--memory-budget) or `available` (the memory the system had available when the job
    /// started, /proc/meminfo's MemAvailable).
    pub source: BudgetSource,
}

/// Where a [`MemoryBudget`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetSource {
    /// `--memory-budget`.
    Flag,
    /// The memory available when the job started.
    Available,
}

impl MemoryBudget {
    /// A budget of `bytes` from `source`.
    pub fn new(bytes: u64, source: BudgetSource) -> Self {
        Self {
            mib: bytes as f64 / (1u64 << 20) as f64,
            source,
        }
    }

    /// `--memory-budget`'s value if given, else the memory available now; `None` when neither is
    /// known (outside Linux).
    pub fn resolve(flag: Option<u64>) -> Option<Self> {
        match flag {
            Some(bytes) => Some(Self::new(bytes, BudgetSource::Flag)),
            None => available_memory().map(|b| Self::new(b, BudgetSource::Available)),
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> u64 {
        (self.mib * (1u64 << 20) as f64) as u64
    }

    /// How messages name it.
    pub fn describe(&self) -> String {
        let gib = self.mib / 1024.0;
        match self.source {
            BudgetSource::Flag => format!("the --memory-budget of {gib:.1} GiB"),
            BudgetSource::Available => format!("the {gib:.1} GiB of memory available"),
        }
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes; `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses a size such as `4G`, `4GiB`, `512M`, `1.5g` or `1000000` (bytes); the units are binary
/// (K = 1024 bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4G, 512M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use K, M, G or T)")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("'{s}' must be a positive size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units_and_refuse_nonsense() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "G", "-1G", "0", "4X", "four"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
