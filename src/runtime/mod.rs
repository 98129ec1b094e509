//! ONNX Runtime: finding the library, choosing the execution provider, and running causal LMs.
//! This is the only module that touches `ort`.

mod feeds;
mod lm;
mod session;

pub use feeds::GraphFeeds;
pub use lm::{logits_output, whole_model_bytes, CausalLm};
pub use session::{symbolic_type, Activation, ModelSession};

pub use crate::device::Device;

use crate::error::{Error, Result};
use crate::progress::Progress;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable ONNX Runtime's location may be given in.
pub const ORT_ENV_VAR: &str = "ORT_DYLIB_PATH";
/// Where the project's setup puts the library, relative to the repository root.
pub const PROJECT_LIB: &str = ".cache/ort/lib/libonnxruntime.so";
/// The library's file name, looked for beside the executable and in `../lib` from it.
const LIB_NAME: &str = "libonnxruntime.so";

/// Finds `libonnxruntime`: `explicit` (`--ort-lib`), then `$ORT_DYLIB_PATH`, then the fixed
/// places of [`default_libraries`] for the running executable, and nowhere else.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    find_library(
        explicit,
        std::env::var_os(ORT_ENV_VAR).map(PathBuf::from),
        &default_libraries(exe.as_deref()),
    )
}

/// The places the library is looked for when neither `--ort-lib` nor `$ORT_DYLIB_PATH` names it,
/// in order: beside the executable `exe`, in `../lib` from the executable's folder, and in the
/// build tree's [`PROJECT_LIB`] (the crate root fixed at compile time). Never a folder found by
/// walking up from the executable: above `~/bin` that would be `~/.cache`, which any program of
/// the user may write to.
pub fn default_libraries(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        places.push(dir.join(LIB_NAME));
        places.push(dir.join("..").join("lib").join(LIB_NAME));
    }
    places.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(PROJECT_LIB));
    places
}

/// [`locate_library`] with its inputs given: `explicit`, the value of `$ORT_DYLIB_PATH` (`env`)
/// and the fixed `places`, the first file of which is taken.
fn find_library(
    explicit: Option<&Path>,
    env: Option<PathBuf>,
    places: &[PathBuf],
) -> Result<PathBuf> {
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
    if let Some(path) = env {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Runtime(format!(
                "{ORT_ENV_VAR}={} does not name a file",
                path.display()
            )))
        };
    }
    if let Some(found) = places.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Runtime(format!(
        "libonnxruntime not found (no --ort-lib, no {ORT_ENV_VAR}, none of {}). \
         Run `make setup` in the neuroal-onnx checkout, or download the PyPI `onnxruntime==1.32.0` wheel and pass \
         --ort-lib path/to/onnxruntime/capi/libonnxruntime.so.1.32.0",
        tried.join(", ")
    )))
}

/// The NVIDIA libraries the CUDA execution provider loads, in dependency order: the `lib<name>.so*`
/// files preloaded from an `nvidia/*/lib` folder (`cudnn` stands for every `libcudnn*`).
const NVIDIA_LIBRARIES: [&str; 8] = [
    "cudart",
    "cublasLt",
    "cublas",
    "cufft",
    "curand",
    "nvJitLink",
    "nvrtc",
    "cudnn",
];

/// What preloading the NVIDIA libraries next to the ONNX Runtime library did.
#[derive(Debug)]
pub struct Preload {
    /// The `nvidia/` folder the libraries were taken from.
    pub root: PathBuf,
    /// The libraries loaded, in load order.
    pub loaded: Vec<PathBuf>,
    /// The libraries that did not load, each with the loader's reason, in load order.
    pub failures: Vec<String>,
}

/// The preloaded libraries: opened once per process and never closed.
static PRELOADED: OnceLock<(Preload, Vec<libloading::os::unix::Library>)> = OnceLock::new();

/// The `nvidia/` folder that holds the NVIDIA wheels' libraries for `library`, in one of two
/// layouts, following a symbolic link to the library when neither is found beside the link:
/// - beside the library's folder, as `scripts/fetch-ort-gpu.sh` writes it
///   (`DEST/lib/libonnxruntime.so` and `DEST/nvidia/<pkg>/lib`);
/// - a pip environment's (`site-packages/onnxruntime/capi/libonnxruntime.so` and
///   `site-packages/nvidia/<pkg>/lib`, where `pip install onnxruntime-gpu[cuda,cudnn]` puts them).
pub fn nvidia_folder(library: &Path) -> Option<PathBuf> {
    let near = |lib: &Path| {
        let folder = lib.parent()?;
        [folder.parent()?, folder.parent()?.parent()?]
            .into_iter()
            .map(|up| up.join("nvidia"))
            .find(|dir| dir.is_dir())
    };
    near(library).or_else(|| near(&library.canonicalize().ok()?))
}

/// The NVIDIA libraries under `root/*/lib`, in the order of [`NVIDIA_LIBRARIES`]; one file per
/// library (the shortest name, which is the soname in the wheels), cuDNN's graph and ops libraries
/// before its other parts and the `libcudnn` front last.
pub fn nvidia_libraries(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path().join("lib")).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // `libcublas.so.13` → "cublas"; `libcudnn_ops.so.9` → "cudnn_ops".
    let stem = |p: &Path| -> Option<String> {
        let name = p.file_name()?.to_str()?;
        let (stem, rest) = name.strip_prefix("lib")?.split_once(".so")?;
        (rest.is_empty() || rest.starts_with('.')).then(|| stem.to_string())
    };
    let mut chosen: Vec<(usize, u8, String, PathBuf)> = Vec::new();
    for file in files {
        let Some(stem) = stem(&file) else { continue };
        let Some(rank) = NVIDIA_LIBRARIES
            .iter()
            .position(|n| stem == *n || (*n == "cudnn" && stem.starts_with("cudnn_")))
        else {
            continue;
        };
        let sub = match stem.as_str() {
            "cudnn_graph" => 0,
            "cudnn_ops" => 1,
            "cudnn" => 3,
            _ => 2,
        };
        let name_len = |p: &Path| p.file_name().map_or(usize::MAX, |n| n.len());
        match chosen.iter_mut().find(|c| c.2 == stem) {
            Some(c) if name_len(&file) < name_len(&c.3) => c.3 = file,
            Some(_) => {}
            None => chosen.push((rank, sub, stem, file)),
        }
    }
    chosen.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    chosen.into_iter().map(|c| c.3).collect()
}

/// Loads the NVIDIA libraries under `root` globally (`RTLD_NOW | RTLD_GLOBAL`), once per process,
/// so that the CUDA execution provider (and NVRTC for the mask kernels) find them by soname
/// without `LD_LIBRARY_PATH`. A library that does not load is recorded, not an error.
pub fn preload_nvidia(root: &Path) -> &'static Preload {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let (preload, _) = PRELOADED.get_or_init(|| {
        let mut preload = Preload {
            root: root.to_path_buf(),
            loaded: Vec::new(),
            failures: Vec::new(),
        };
        let mut handles = Vec::new();
        for lib in nvidia_libraries(root) {
            // SAFETY: NVIDIA's libraries run no initialisers that depend on the caller.
            match unsafe { Library::open(Some(&lib), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(handle) => {
                    handles.push(handle);
                    preload.loaded.push(lib);
                }
                Err(e) => {
                    let why = std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |s| s.to_string());
                    preload.failures.push(format!("{}: {why}", lib.display()));
                }
            }
        }
        (preload, handles)
    });
    preload
}

/// ONNX Runtime's message without the source location and status code in front of it
/// (`/onnxruntime_src/….cc:2043 … [ONNXRuntimeError] : 1 : FAIL : message`).
fn ort_message(text: &str) -> &str {
    const MARK: &str = "[ONNXRuntimeError] : ";
    match text.find(MARK) {
        Some(i) => {
            let rest = &text[i + MARK.len()..];
            rest.splitn(3, " : ").nth(2).unwrap_or(rest)
        }
        None => text,
    }
}

/// An initialised ONNX Runtime and the device sessions run on.
pub struct Runtime {
    library: PathBuf,
    requested: Device,
    /// The first NVIDIA library that failed to preload, with the reason.
    preload_failure: Option<String>,
    /// The device sessions actually use, decided by the first session (`Auto` falls back once).
    resolved: Mutex<Option<Device>>,
    /// Why `Auto` fell back to the CPU, when it did.
    fallback: Mutex<Option<String>>,
    threads: usize,
    progress: Progress,
}

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The library ONNX Runtime was loaded from in this process, once `ort::init_from` succeeded.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Checks that `requested` is the library `loaded` (the same path, or two paths to one file):
/// `ort` initialises ONNX Runtime once per process, so another library would silently not be used.
fn same_library(loaded: &Path, requested: &Path) -> Result<()> {
    let file = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if loaded == requested || file(loaded) == file(requested) {
        return Ok(());
    }
    Err(Error::Runtime(format!(
        "this process already loaded {}; it cannot load {} as well (ONNX Runtime is initialised once per process)",
        loaded.display(),
        requested.display()
    )))
}

impl Runtime {
    /// Loads the library at `library` (once per process: asking for another library once one is
    /// loaded is an error, the same one again is not) and prepares sessions for `device`.
    /// `threads` = 0 lets ONNX Runtime choose; a fallback to the CPU is noted on `progress`.
    /// For `auto` and `cuda`, the NVIDIA libraries of the library's `nvidia/` folder
    /// ([`nvidia_folder`]) are preloaded first ([`preload_nvidia`]).
    pub fn new(
        library: &Path,
        device: Device,
        threads: usize,
        progress: &Progress,
    ) -> Result<Self> {
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(first) = loaded.as_deref() {
            same_library(first, library)?;
        }
        let preload_failure = match (device, nvidia_folder(library)) {
            (Device::Auto | Device::Cuda, Some(root)) => {
                preload_nvidia(&root).failures.first().cloned()
            }
            _ => None,
        };
        if ENVIRONMENT.get().is_none() {
            let builder = ort::init_from(library)
                .map_err(|e| Error::Runtime(format!("cannot load {}: {e}", library.display())))?;
            // From here on this process runs `library`, whatever else is asked for later.
            *loaded = Some(library.to_path_buf());
            let env = builder
                .with_name("neuroal-onnx")
                .build()
                .map_err(|e| Error::Runtime(format!("cannot create the environment: {e}")))?;
            let _ = ENVIRONMENT.set(env);
        }
        drop(loaded);
        Ok(Self {
            library: library.to_path_buf(),
            requested: device,
            preload_failure,
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

    /// The intra-op threads of each session (`--threads`); `None` when ONNX Runtime chooses (one
    /// per physical core). Its float sums can change with this number, so a job reproduces its
    /// model bit for bit with the same threads (docs/gpu.md, "Reproducing a model").
    pub fn threads(&self) -> Option<usize> {
        (self.threads > 0).then_some(self.threads)
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
        // Without the CPU arena, memory a run no longer needs goes back at once: a block's fp32
        // copies of fp16 weights stay resident otherwise (2.6 GB against 1.0 GB on a 4.5 GiB
        // model, docs/big-models.md), at no measured cost in speed.
        let cpu = || -> Result<ort::session::builder::SessionBuilder> {
            let ep = ort::ep::CPU::default().with_arena_allocator(false).build();
            base()?.with_execution_providers([ep]).map_err(|e| fail(&e))
        };
        let device = resolved.unwrap_or(self.requested);
        let mut builder = match device {
            Device::Cpu => cpu()?,
            Device::Cuda | Device::Auto => {
                // TF32 matrix products (ONNX Runtime's default) round the activations the
                // statistics are taken from to 10-bit mantissas: calibration runs in full fp32.
                let cuda = ort::ep::CUDA::default()
                    .with_tf32(false)
                    .build()
                    .error_on_failure();
                match base()?.with_execution_providers([cuda]) {
                    Ok(b) => {
                        *resolved = Some(Device::Cuda);
                        b
                    }
                    Err(e) if device == Device::Auto => {
                        let reason = self.cuda_failure(&e);
                        self.progress.note(&format!(
                            "note: CUDA execution provider unavailable ({reason}); running ONNX Runtime on the CPU"
                        ));
                        if let Ok(mut f) = self.fallback.lock() {
                            *f = Some(reason);
                        }
                        *resolved = Some(Device::Cpu);
                        cpu()?
                    }
                    Err(e) => {
                        return Err(Error::invalid(
                            "--device",
                            format!(
                                "cuda: the CUDA execution provider cannot be used: {}",
                                self.cuda_failure(&e)
                            ),
                        ))
                    }
                }
            }
        };
        if resolved.is_none() {
            *resolved = Some(device);
        }
        commit(&mut builder).map_err(|e| fail(&e))
    }

    /// Why the CUDA execution provider could not be registered, on one line, with the first
    /// NVIDIA library that failed to preload.
    fn cuda_failure(&self, e: &dyn std::fmt::Display) -> String {
        let mut reason = ort_message(&e.to_string()).to_string();
        if let Some(first) = &self.preload_failure {
            reason = format!(
                "{}; preloading the NVIDIA libraries, {first}",
                reason.trim_end().trim_end_matches('.')
            );
        }
        reason
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn the_library_is_looked_for_only_in_fixed_places() {
        let dir = tempfile::tempdir().unwrap();
        // An executable in ~/bin: ~/.cache/ort/lib above it is never a candidate.
        let home = dir.path().join("home");
        let exe = home.join("bin/neuroal-onnx");
        touch(&home.join(PROJECT_LIB));
        let places = default_libraries(Some(&exe));
        let build_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join(PROJECT_LIB);
        assert_eq!(
            places,
            [
                home.join("bin/libonnxruntime.so"),
                home.join("bin/../lib/libonnxruntime.so"),
                build_tree.clone()
            ]
        );
        assert_eq!(default_libraries(None), [build_tree]);
        let places = [
            home.join("bin/libonnxruntime.so"),
            home.join("bin/../lib/libonnxruntime.so"),
        ];
        let e = find_library(None, None, &places).unwrap_err().to_string();
        assert!(
            e.contains("libonnxruntime not found") && e.contains("bin/../lib/libonnxruntime.so"),
            "{e}"
        );
        // The first place that holds the file wins; the flag, then the variable, before any.
        touch(&places[1]);
        assert_eq!(find_library(None, None, &places).unwrap(), places[1]);
        touch(&places[0]);
        assert_eq!(find_library(None, None, &places).unwrap(), places[0]);
        let flag = dir.path().join("flag.so");
        let var = dir.path().join("var.so");
        touch(&flag);
        touch(&var);
        assert_eq!(find_library(None, Some(var.clone()), &places).unwrap(), var);
        assert_eq!(
            find_library(Some(&flag), Some(var.clone()), &places).unwrap(),
            flag
        );
        // A name that is not a file is an error, never a fall-through to the next place.
        let missing = dir.path().join("missing.so");
        let e = find_library(Some(&missing), None, &places).unwrap_err();
        assert!(e.to_string().contains("--ort-lib"), "{e}");
        let e = find_library(None, Some(missing), &places).unwrap_err();
        assert!(e.to_string().contains(ORT_ENV_VAR), "{e}");
    }

    #[test]
    fn a_second_library_in_one_process_is_refused_the_same_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (first, other) = (dir.path().join("a/lib.so"), dir.path().join("b/lib.so"));
        touch(&first);
        touch(&other);
        let link = dir.path().join("link.so");
        std::os::unix::fs::symlink(&first, &link).unwrap();
        assert!(same_library(&first, &first).is_ok());
        assert!(same_library(&first, &link).is_ok(), "two paths to one file");
        let e = same_library(&first, &other).unwrap_err().to_string();
        assert!(
            e.contains("a/lib.so") && e.contains("b/lib.so") && e.contains("once per process"),
            "{e}"
        );
    }

    #[test]
    fn nvidia_libraries_come_in_dependency_order_one_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nvidia");
        let cu13 = [
            "libcudart.so.13",
            "libcudart.so.13.0.96",
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libnvblas.so.13",
            "libcufft.so.12",
            "libcufftw.so.12",
            "libcurand.so.10",
            "libnvJitLink.so.13",
            "libnvrtc.so.13",
            "libnvrtc-builtins.so.13.5",
        ];
        for name in cu13 {
            touch(&root.join("cu13/lib").join(name));
        }
        for name in [
            "libcudnn.so.9",
            "libcudnn_adv.so.9",
            "libcudnn_engines_precompiled.so.9",
            "libcudnn_graph.so.9",
            "libcudnn_ops.so.9",
        ] {
            touch(&root.join("cudnn/lib").join(name));
        }
        touch(&root.join("cudnn/include/cudnn.h"));
        let got: Vec<String> = nvidia_libraries(&root)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "libcudart.so.13",
                "libcublasLt.so.13",
                "libcublas.so.13",
                "libcufft.so.12",
                "libcurand.so.10",
                "libnvJitLink.so.13",
                "libnvrtc.so.13",
                "libcudnn_graph.so.9",
                "libcudnn_ops.so.9",
                "libcudnn_adv.so.9",
                "libcudnn_engines_precompiled.so.9",
                "libcudnn.so.9",
            ]
        );
    }

    #[test]
    fn the_nvidia_folder_is_beside_the_library_folder_or_its_link_target() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("ort-gpu/lib/libonnxruntime.so.1.31.1");
        touch(&lib);
        assert_eq!(nvidia_folder(&lib), None);
        std::fs::create_dir_all(dir.path().join("ort-gpu/nvidia")).unwrap();
        assert_eq!(nvidia_folder(&lib), Some(dir.path().join("ort-gpu/nvidia")));
        let link = dir.path().join("elsewhere/libonnxruntime.so");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&lib, &link).unwrap();
        let found = nvidia_folder(&link).unwrap();
        assert_eq!(
            found.canonicalize().unwrap(),
            dir.path().join("ort-gpu/nvidia").canonicalize().unwrap()
        );
    }

    #[test]
    fn the_nvidia_folder_of_a_pip_environment_is_found_above_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("venv/lib/python3.12/site-packages");
        let lib = site.join("onnxruntime/capi/libonnxruntime.so.1.31.1");
        touch(&lib);
        assert_eq!(nvidia_folder(&lib), None);
        std::fs::create_dir_all(site.join("nvidia/cu13/lib")).unwrap();
        assert_eq!(nvidia_folder(&lib), Some(site.join("nvidia")));
        // A folder beside the library's folder comes first.
        std::fs::create_dir_all(site.join("onnxruntime/nvidia")).unwrap();
        assert_eq!(nvidia_folder(&lib), Some(site.join("onnxruntime/nvidia")));
    }

    #[test]
    fn onnx_runtime_messages_lose_their_source_location() {
        let text = "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 \
                    onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : \
                    FAIL : Failed to load library x.so with error: libcuda.so.1: cannot open";
        assert_eq!(
            ort_message(text),
            "Failed to load library x.so with error: libcuda.so.1: cannot open"
        );
        assert_eq!(
            ort_message("CUDA execution provider is not enabled in this build."),
            "CUDA execution provider is not enabled in this build."
        );
    }
}
