//! ONNX Runtime: finding the library, choosing the execution provider, and running causal LMs.
//! This is the only module that touches `ort`.

mod feeds;
mod lm;
mod session;

pub use feeds::GraphFeeds;
pub use lm::CausalLm;
pub use session::{Activation, ModelSession};

use crate::error::{Error, Result};
use crate::progress::Progress;
use ort::session::Session;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where ONNX Runtime should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CUDA execution provider when it loads, else the CPU (with one line saying so).
    Auto,
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider; an error when it cannot be used.
    Cuda,
}

/// The environment variable ONNX Runtime's location may be given in.
pub const ORT_ENV_VAR: &str = "ORT_DYLIB_PATH";
/// Where the project's setup puts the library, relative to the repository root.
pub const PROJECT_LIB: &str = ".cache/ort/lib/libonnxruntime.so";

/// Finds `libonnxruntime`: `explicit` (`--ort-lib`), then `$ORT_DYLIB_PATH`, then the project's
/// cache above the running executable.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::invalid(
                "--ort-lib",
                format!("{} does not exist or is not a file", path.display()),
            ))
        };
    }
    if let Some(path) = std::env::var_os(ORT_ENV_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Runtime(format!(
                "{ORT_ENV_VAR}={} does not name a file",
                path.display()
            )))
        };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join(PROJECT_LIB);
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    Err(Error::Runtime(format!(
        "libonnxruntime not found (no --ort-lib, no {ORT_ENV_VAR}, no {PROJECT_LIB} above the executable). \
         Run `make setup` in the neuroal-onnx checkout, or download the PyPI `onnxruntime==1.32.0` wheel and pass \
         --ort-lib path/to/onnxruntime/capi/libonnxruntime.so.1.32.0"
    )))
}

/// An initialised ONNX Runtime and the device sessions run on.
pub struct Runtime {
    library: PathBuf,
    requested: Device,
    /// The device sessions actually use, decided by the first session (`Auto` falls back once).
    resolved: Mutex<Option<Device>>,
    /// Why `Auto` fell back to the CPU, when it did.
    fallback: Mutex<Option<String>>,
    threads: usize,
    progress: Progress,
}

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

impl Runtime {
    /// Loads the library at `library` (once per process) and prepares sessions for `device`.
    /// `threads` = 0 lets ONNX Runtime choose; a fallback to the CPU is noted on `progress`.
    pub fn new(
        library: &Path,
        device: Device,
        threads: usize,
        progress: &Progress,
    ) -> Result<Self> {
        if ENVIRONMENT.get().is_none() {
            let builder = ort::init_from(library)
                .map_err(|e| Error::Runtime(format!("cannot load {}: {e}", library.display())))?;
            let env = builder
                .with_name("neuroal-onnx")
                .build()
                .map_err(|e| Error::Runtime(format!("cannot create the environment: {e}")))?;
            let _ = ENVIRONMENT.set(env);
        }
        Ok(Self {
            library: library.to_path_buf(),
            requested: device,
            resolved: Mutex::new(None),
            fallback: Mutex::new(None),
            threads,
            progress: progress.clone(),
        })
    }

    /// The library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The ONNX Runtime version, read from the library's file name when it carries one.
    pub fn version(&self) -> Option<String> {
        let resolved = self.library.canonicalize().ok()?;
        let name = resolved.file_name()?.to_string_lossy().into_owned();
        let version = name.split(".so.").nth(1)?;
        version.contains('.').then(|| version.to_string())
    }

    /// The device sessions run on (known after the first session).
    pub fn device(&self) -> Device {
        self.resolved
            .lock()
            .map(|d| d.unwrap_or(self.requested))
            .unwrap_or(self.requested)
    }

    /// Why `--device auto` fell back to the CPU, when it did.
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback.lock().ok().and_then(|f| f.clone())
    }

    /// Opens a session on the model file `model`, on the resolved device.
    pub fn session(&self, model: &Path) -> Result<Session> {
        self.open(model, |b| b.commit_from_file(model))
    }

    /// Opens a session on a serialized model held in memory; `label` names it in errors.
    pub fn session_from_memory(&self, bytes: &[u8], label: &Path) -> Result<Session> {
        self.open(label, |b| b.commit_from_memory(bytes))
    }

    fn open(
        &self,
        model: &Path,
        commit: impl FnOnce(&mut ort::session::builder::SessionBuilder) -> ort::Result<Session>,
    ) -> Result<Session> {
        let env = ENVIRONMENT
            .get()
            .ok_or_else(|| Error::Runtime("the environment is not initialised".into()))?;
        let fail = |e: &dyn std::fmt::Display| {
            Error::Runtime(format!("cannot open {}: {e}", model.display()))
        };
        let mut resolved = self
            .resolved
            .lock()
            .map_err(|_| Error::Runtime("device state poisoned".into()))?;
        let base = || -> Result<ort::session::builder::SessionBuilder> {
            let b = Session::builder(env).map_err(|e| fail(&e))?;
            if self.threads > 0 {
                b.with_intra_threads(self.threads).map_err(|e| fail(&e))
            } else {
                Ok(b)
            }
        };
        let device = resolved.unwrap_or(self.requested);
        let mut builder = match device {
            Device::Cpu => base()?,
            Device::Cuda | Device::Auto => {
                let cuda = ort::ep::CUDA::default().build().error_on_failure();
                match base()?.with_execution_providers([cuda]) {
                    Ok(b) => {
                        *resolved = Some(Device::Cuda);
                        b
                    }
                    Err(e) if device == Device::Auto => {
                        let reason = e.to_string().trim_end_matches('.').to_string();
                        self.progress.note(&format!(
                            "note: CUDA execution provider unavailable ({reason}); running ONNX Runtime on the CPU"
                        ));
                        if let Ok(mut f) = self.fallback.lock() {
                            *f = Some(reason);
                        }
                        *resolved = Some(Device::Cpu);
                        base()?
                    }
                    Err(e) => {
                        return Err(Error::Runtime(format!(
                            "--device cuda: the CUDA execution provider cannot be used: {e}"
                        )))
                    }
                }
            }
        };
        if resolved.is_none() {
            *resolved = Some(device);
        }
        commit(&mut builder).map_err(|e| fail(&e))
    }
}
