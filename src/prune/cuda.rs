//! The CUDA mask path: `kernels/*.cu` compiled at run time by NVRTC and launched through cudarc.
//! The kernels prune exactly what [`prune_mask`](super::prune_mask) prunes (kernels/README.md).
//! Nothing here panics when there is no GPU, driver or NVRTC: every entry point checks that the
//! libraries load before touching them and reports why not as a `String`.

use super::mask::{neuron_prune_count, row_prune_count, MaskRule, RowMask};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// One `.cu` file of `kernels/`: its name, its text (embedded in the binary) and its entry points.
pub struct KernelSource {
    /// File name under `kernels/`.
    pub file: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// The `extern "C" __global__` functions it defines.
    pub entries: &'static [&'static str],
}

/// Every kernel source.
pub const SOURCES: &[KernelSource] = &[KernelSource {
    file: "masks.cu",
    source: include_str!("../../kernels/masks.cu"),
    entries: &[ROWS_ENTRY, N_OF_M_ENTRY],
}];

const ROWS_ENTRY: &str = "prune_rows_f32";
const N_OF_M_ENTRY: &str = "prune_n_of_m_f32";
/// `ROW_THREADS` in masks.cu: the block size `prune_rows_f32` is written for.
const ROW_THREADS: u32 = 256;
/// Threads per block of `prune_n_of_m_f32` (one thread per group).
const GROUP_THREADS: u32 = 256;

/// Virtual architectures [`compile_ptx_all`] compiles for: the oldest CUDA 13 supports (Turing)
/// and Hopper (H100, H200).
pub const PTX_ARCHS: &[&str] = &["compute_75", "compute_90"];

/// Which of two entries with equal scores is pruned first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ties {
    /// The lower column index (granularity `"row"`, N:M).
    LowerIndexFirst,
    /// The higher column index (granularity `"neuron"`: the lower index is kept first).
    HigherIndexFirst,
}

/// Per-row prune counts and tie order of a per-row rule, as [`prune_mask`](super::prune_mask)
/// counts them; `None` for N:M.
pub fn row_counts(rule: &MaskRule, rows: usize, cols: usize) -> Option<(Vec<u32>, Ties)> {
    let clamp = |n: usize| n.min(u32::MAX as usize) as u32;
    match rule {
        MaskRule::Row(s) => Some((
            vec![clamp(row_prune_count(cols, *s)); rows],
            Ties::LowerIndexFirst,
        )),
        MaskRule::Neuron(per_row) => Some((
            per_row
                .iter()
                .map(|s| clamp(neuron_prune_count(cols, *s)))
                .collect(),
            Ties::HigherIndexFirst,
        )),
        MaskRule::NofM { .. } => None,
    }
}

/// The NaN this CPU's multiply makes from 0·∞, which the CPU path's Wanda score holds for such
/// an entry; the kernels are compiled to give the same (x86-64: `0xFFC00000`).
fn cpu_default_nan() -> u32 {
    (std::hint::black_box(0.0f32) * std::hint::black_box(f32::INFINITY)).to_bits()
}

/// Why NVRTC cannot be used, if it cannot.
fn nvrtc_missing() -> Option<String> {
    // SAFETY: only tries to dlopen the library names cudarc knows; loads nothing else.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    (!present).then(|| {
        "NVRTC (libnvrtc.so.13) was not found: put its folder on LD_LIBRARY_PATH (`make setup` \
         fetches one into .cache/nvrtc/lib; a CUDA toolkit has one in lib64)"
            .to_string()
    })
}

/// What NVRTC should hand back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// PTX for a virtual architecture (`compute_XY`).
    Ptx,
    /// Machine code for a real one (`sm_XY`); loads on a driver older than this NVRTC within
    /// the same major version, which PTX does not.
    Cubin,
}

/// Compiles `source` for `arch` with NVRTC (which must be present: [`nvrtc_missing`]). Returns
/// the PTX or CUBIN bytes and NVRTC's log (ptxas's resource report with `verbose`).
fn nvrtc_compile(
    source: &KernelSource,
    arch: &str,
    output: Output,
    verbose: bool,
) -> Result<(Vec<u8>, String), String> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{c_char, CString};
    let fail = |what: &str, e: &dyn std::fmt::Debug| {
        format!(
            "kernels/{}: NVRTC {what} failed for {arch}: {e:?}",
            source.file
        )
    };
    let text = CString::new(source.source).map_err(|e| fail("reading the source", &e))?;
    let name = CString::new(source.file).map_err(|e| fail("naming the source", &e))?;
    let prog = result::create_program(&text, Some(&name)).map_err(|e| fail("create", &e))?;
    /// Destroys the program however this function returns.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created by create_program and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let prog = Program(prog);
    let mut options = vec![
        // IEEE products with denormals, no contraction: scores bit-identical to the CPU's.
        "--ftz=false".to_string(),
        "--fmad=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        format!("--gpu-architecture={arch}"),
        format!("-DNEUROAL_DEFAULT_NAN={:#010x}u", cpu_default_nan()),
    ];
    if verbose {
        options.push("--ptxas-options=-v".into());
    }
    // SAFETY: `prog` is a live program; the log is read before it is destroyed.
    let compiled = unsafe { result::compile_program(prog.0, &options) };
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|raw| {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).trim_end().to_string()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(format!(
            "kernels/{} does not compile for {arch} ({e:?}):\n{log}",
            source.file
        ));
    }
    /// `nvrtcGet{PTX,CUBIN}Size` and `nvrtcGet{PTX,CUBIN}`.
    type SizeFn = unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult;
    type GetFn = unsafe fn(sys::nvrtcProgram, *mut c_char) -> sys::nvrtcResult;
    let (size_of, get): (SizeFn, GetFn) = match output {
        Output::Ptx => (sys::nvrtcGetPTXSize, sys::nvrtcGetPTX),
        Output::Cubin => (sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN),
    };
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer holds the size NVRTC reported.
    unsafe { size_of(prog.0, &mut size) }
        .result()
        .map_err(|e| fail("size", &e))?;
    let mut bytes = vec![0u8; size];
    unsafe { get(prog.0, bytes.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| fail("output", &e))?;
    if output == Output::Ptx {
        // PTX comes NUL-terminated.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
    }
    Ok((bytes, log))
}

/// Compiles every kernel source to PTX for each of [`PTX_ARCHS`] with NVRTC; needs no GPU or
/// driver. Returns `("<file> <arch>", ptx)` pairs, or the first failure with NVRTC's log.
pub fn compile_ptx_all() -> Result<Vec<(String, String)>, String> {
    if let Some(why) = nvrtc_missing() {
        return Err(why);
    }
    let mut out = Vec::new();
    for source in SOURCES {
        for &arch in PTX_ARCHS {
            let (ptx, _) = nvrtc_compile(source, arch, Output::Ptx, false)?;
            let ptx = String::from_utf8(ptx)
                .map_err(|_| format!("kernels/{}: the PTX for {arch} is not text", source.file))?;
            out.push((format!("{} {arch}", source.file), ptx));
        }
    }
    Ok(out)
}

/// ptxas's resource report (registers, shared memory, spills) of every kernel source compiled
/// to machine code for each of [`PTX_ARCHS`]' real architectures; needs no GPU or driver.
pub fn resource_report() -> Result<Vec<(String, String)>, String> {
    if let Some(why) = nvrtc_missing() {
        return Err(why);
    }
    let mut out = Vec::new();
    for source in SOURCES {
        for &arch in PTX_ARCHS {
            let sm = arch.replace("compute_", "sm_");
            let (_, log) = nvrtc_compile(source, &sm, Output::Cubin, true)?;
            out.push((format!("{} {sm}", source.file), log));
        }
    }
    Ok(out)
}

/// Formats a CUDA driver error with what was being done.
fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("CUDA {what}: {e}")
}

/// The mask kernels, compiled for and loaded on device 0.
pub struct CudaMasker {
    stream: Arc<CudaStream>,
    rows: CudaFunction,
    n_of_m: CudaFunction,
    device: String,
}

impl CudaMasker {
    /// Loads the driver and NVRTC, opens device 0 and compiles the kernels for its own
    /// architecture. Every failure (no driver, no device, no NVRTC, a kernel that does not
    /// compile or load) is returned as the reason, never a panic.
    ///
    /// A self-test on a small matrix (ties, NaN, infinities; every rule) must then give exactly
    /// the CPU path's masks, or the kernels are refused.
    pub fn new() -> Result<CudaMasker, String> {
        // cudarc panics on a driver that lacks a symbol it expects: a reason like any other.
        std::panic::catch_unwind(|| {
            let masker = Self::open()?;
            masker.self_test()?;
            Ok(masker)
        })
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(format!("CUDA failed: {what}"))
        })
    }

    fn open() -> Result<CudaMasker, String> {
        // SAFETY: only tries to dlopen the driver library; cudarc panics later without it.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so.1 was not found)".into());
        }
        if let Some(why) = nvrtc_missing() {
            return Err(why);
        }
        let ctx = CudaContext::new(0).map_err(|e| format!("no usable CUDA device: {e}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device 0".into());
        let device = format!("{name} (sm_{major}{minor})");
        let arch = format!("sm_{major}{minor}");
        let mut functions = Vec::new();
        for source in SOURCES {
            let (cubin, _) = nvrtc_compile(source, &arch, Output::Cubin, false)?;
            let module = ctx.load_module(Ptx::from_binary(cubin)).map_err(|e| {
                format!(
                    "{device} cannot load kernels/{} compiled for {arch} ({e}); is the NVRTC on \
                     LD_LIBRARY_PATH of a newer CUDA major version than the driver?",
                    source.file
                )
            })?;
            for entry in source.entries {
                let f = module
                    .load_function(entry)
                    .map_err(|e| format!("kernels/{}: no entry {entry}: {e}", source.file))?;
                functions.push((*entry, f));
            }
        }
        let take = |entry: &str| {
            functions
                .iter()
                .find(|(e, _)| *e == entry)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| format!("kernel {entry} is missing"))
        };
        Ok(CudaMasker {
            rows: take(ROWS_ENTRY)?,
            n_of_m: take(N_OF_M_ENTRY)?,
            stream: ctx.default_stream(),
            device,
        })
    }

    /// Runs every rule on a small matrix with ties, NaN, infinities and signed zeros and
    /// requires the CPU path's masks and pruned weights, bit for bit.
    fn self_test(&self) -> Result<(), String> {
        use super::{magnitude, prune_mask, wanda};
        let (rows, cols) = (4, 520);
        let mut rng = Rng(7);
        let mut w = random_weights(&mut rng, rows, cols, true);
        for (i, v) in [
            (3, f32::NAN),
            (5, -0.0),
            (7, f32::INFINITY),
            (9, 0.0),
            (600, -f32::NAN),
        ] {
            w[i] = v;
        }
        let mut norms: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
        for (j, v) in [
            (5, f32::INFINITY),
            (9, f32::INFINITY),
            (11, 0.0),
            (13, f32::NAN),
        ] {
            norms[j] = v;
        }
        let rules = [
            (MaskRule::Row(0.5), false),
            (MaskRule::Neuron(vec![0.3, 0.6, 0.9, 0.999]), true),
            (MaskRule::NofM { n: 2, m: 4 }, true),
        ];
        for (rule, with_norms) in rules {
            let a = with_norms.then_some(norms.as_slice());
            let scores = match a {
                Some(a) => wanda(&w, a),
                None => magnitude(&w),
            };
            let cpu = prune_mask(&scores, rows, cols, &rule);
            let mut cpu_w = w.clone();
            cpu.apply(&mut cpu_w);
            let mut gpu_w = w.clone();
            let gpu = self.mask(&mut gpu_w, rows, cols, a, &rule, true)?;
            let same_weights = cpu_w
                .iter()
                .zip(&gpu_w)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            if gpu.as_ref() != Some(&cpu) || !same_weights {
                return Err(format!(
                    "the kernels on {} disagree with the CPU path on a self-test ({rule:?}); \
                     refusing them",
                    self.device
                ));
            }
        }
        Ok(())
    }

    /// The device's name and architecture, for messages.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Prunes under `rule` in place, as [`prune_mask`](super::prune_mask) then
    /// [`RowMask::apply`] would on the magnitude (`norms` absent) or Wanda score.
    pub fn prune(
        &self,
        weights: &mut [f32],
        rows: usize,
        cols: usize,
        norms: Option<&[f32]>,
        rule: &MaskRule,
    ) -> Result<(), String> {
        self.mask(weights, rows, cols, norms, rule, false)
            .map(|_| ())
    }

    /// [`prune`](Self::prune), also returning the mask when `want_mask`.
    pub fn mask(
        &self,
        weights: &mut [f32],
        rows: usize,
        cols: usize,
        norms: Option<&[f32]>,
        rule: &MaskRule,
        want_mask: bool,
    ) -> Result<Option<RowMask>, String> {
        let kernel = Kernel::for_rule(rule, rows, cols)?;
        let flags = self.run(weights, rows, cols, norms, kernel, want_mask)?;
        Ok(flags.map(|f| RowMask {
            rows,
            cols,
            pruned: f.into_iter().map(|p| p != 0).collect(),
        }))
    }

    fn run(
        &self,
        weights: &mut [f32],
        rows: usize,
        cols: usize,
        norms: Option<&[f32]>,
        kernel: Kernel,
        want_mask: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        check_shape(weights, rows, cols, norms, &kernel)?;
        if weights.is_empty() {
            return Ok(want_mask.then(Vec::new));
        }
        let s = &self.stream;
        let mut w = s.clone_htod(weights).map_err(driver("upload"))?;
        let a = norms
            .map(|n| s.clone_htod(n))
            .transpose()
            .map_err(driver("upload"))?;
        let mut flags = if want_mask {
            Some(
                s.alloc_zeros::<u8>(weights.len())
                    .map_err(driver("alloc"))?,
            )
        } else {
            None
        };
        let counts = match &kernel {
            Kernel::Rows(c, _) => Some(s.clone_htod(c).map_err(driver("upload"))?),
            Kernel::NofM(..) => None,
        };
        let launch = Launch {
            w: &mut w,
            norms: a.as_ref(),
            counts: counts.as_ref(),
            mask: flags.as_mut(),
            rows,
            cols,
        };
        self.launch(launch, &kernel)?;
        s.memcpy_dtoh(&w, weights).map_err(driver("download"))?;
        let mask = flags
            .map(|f| s.clone_dtoh(&f))
            .transpose()
            .map_err(driver("download"))?;
        s.synchronize().map_err(driver("kernel"))?;
        Ok(mask)
    }

    /// Queues one kernel launch on the stream.
    fn launch(&self, l: Launch<'_>, kernel: &Kernel) -> Result<(), String> {
        const NULL: u64 = 0;
        let (rows, cols) = (l.rows as u32, l.cols as u32);
        let (function, config, p1, p2) = match kernel {
            Kernel::Rows(_, ties) => (
                &self.rows,
                LaunchConfig {
                    grid_dim: (rows, 1, 1),
                    block_dim: (ROW_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                },
                u32::from(*ties == Ties::HigherIndexFirst),
                0,
            ),
            Kernel::NofM(n, m) => {
                let groups = l.rows as u64 * (l.cols / m) as u64;
                let blocks = groups.div_ceil(GROUP_THREADS as u64).clamp(1, 65_535 * 16);
                (
                    &self.n_of_m,
                    LaunchConfig {
                        grid_dim: (blocks as u32, 1, 1),
                        block_dim: (GROUP_THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    },
                    *n as u32,
                    *m as u32,
                )
            }
        };
        let mut b = self.stream.launch_builder(function);
        b.arg(&mut *l.w);
        match l.norms {
            Some(a) => b.arg(a),
            None => b.arg(&NULL),
        };
        match (kernel, l.counts) {
            (Kernel::Rows(..), Some(c)) => {
                b.arg(c).arg(&rows).arg(&cols).arg(&p1);
            }
            _ => {
                b.arg(&rows).arg(&cols).arg(&p1).arg(&p2);
            }
        }
        match l.mask {
            Some(m) => b.arg(m),
            None => b.arg(&NULL),
        };
        // SAFETY: the arguments match the kernel's parameters in number, order and size
        // (pointers as device pointers or a null u64, u32 for unsigned/int), and every buffer
        // holds the element count the kernel indexes (check_shape).
        unsafe { b.launch(config) }.map_err(driver("launch"))?;
        Ok(())
    }
}

/// Which kernel a call runs.
enum Kernel {
    Rows(Vec<u32>, Ties),
    NofM(usize, usize),
}

impl Kernel {
    /// The kernel that applies `rule` to a `[rows, cols]` matrix.
    fn for_rule(rule: &MaskRule, rows: usize, cols: usize) -> Result<Self, String> {
        match (rule, row_counts(rule, rows, cols)) {
            (MaskRule::NofM { n, m }, _) => Ok(Kernel::NofM(*n, *m)),
            (_, Some((counts, ties))) => Ok(Kernel::Rows(counts, ties)),
            (_, None) => Err("unsupported mask rule".into()),
        }
    }
}

/// The device buffers of one launch.
struct Launch<'a> {
    w: &'a mut CudaSlice<f32>,
    norms: Option<&'a CudaSlice<f32>>,
    counts: Option<&'a CudaSlice<u32>>,
    mask: Option<&'a mut CudaSlice<u8>>,
    rows: usize,
    cols: usize,
}

/// Refuses inputs the kernels cannot index safely.
fn check_shape(
    weights: &[f32],
    rows: usize,
    cols: usize,
    norms: Option<&[f32]>,
    kernel: &Kernel,
) -> Result<(), String> {
    if rows.checked_mul(cols) != Some(weights.len()) {
        return Err(format!(
            "{} weights are not a [{rows}, {cols}] matrix",
            weights.len()
        ));
    }
    if cols > u32::MAX as usize || rows > i32::MAX as usize {
        return Err(format!(
            "a [{rows}, {cols}] matrix is too large for the kernels"
        ));
    }
    if let Some(n) = norms {
        if n.len() != cols {
            return Err(format!("{} norms for {cols} columns", n.len()));
        }
    }
    match kernel {
        Kernel::Rows(counts, _) if counts.len() != rows => {
            Err(format!("{} prune counts for {rows} rows", counts.len()))
        }
        Kernel::NofM(n, m) if !(n < m && cols.is_multiple_of(*m)) => Err(format!(
            "{n}:{m} needs n < m and a multiple of m columns, not {cols}"
        )),
        _ => Ok(()),
    }
}

/// Linear shapes `[out, in]` of LLaMA-7B, then of SmolLM2-135M: the GPU check and the mask
/// benchmark run on them.
pub const LLM_SHAPES: &[(usize, usize)] = &[
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
    (576, 576),
    (1536, 576),
    (576, 1536),
];

/// Timed runs per kernel and shape (after [`WARMUP`] untimed ones); the median is reported.
const RUNS: usize = 25;
const WARMUP: usize = 3;

/// A small deterministic generator (SplitMix64) for the check's random matrices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// One row of the check: a score, a rule and how the weights are drawn.
struct Case {
    label: &'static str,
    wanda: bool,
    /// Weights on a 4-bit grid per 32 columns (as SmolLM2's Q4_1 export): many equal scores.
    quantized: bool,
    rule: fn(usize, &mut Rng) -> MaskRule,
}

const CASES: &[Case] = &[
    Case {
        label: "rows, magnitude, row 0.7",
        wanda: false,
        quantized: false,
        rule: |_, _| MaskRule::Row(0.7),
    },
    Case {
        label: "rows, magnitude, row 0.7, 4-bit weights",
        wanda: false,
        quantized: true,
        rule: |_, _| MaskRule::Row(0.7),
    },
    Case {
        label: "rows, wanda, neuron 0.4–0.95",
        wanda: true,
        quantized: false,
        rule: |rows, rng| {
            MaskRule::Neuron((0..rows).map(|_| 0.4 + 0.55 * rng.unit() as f64).collect())
        },
    },
    Case {
        label: "n:m, wanda, 2:4",
        wanda: true,
        quantized: false,
        rule: |_, _| MaskRule::NofM { n: 2, m: 4 },
    },
];

fn random_weights(rng: &mut Rng, rows: usize, cols: usize, quantized: bool) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    let mut scale = 0.0f32;
    for i in 0..rows * cols {
        if quantized {
            if i % 32 == 0 {
                scale = 0.005 + 0.05 * rng.unit();
            }
            w.push(((rng.next() >> 60) as f32 - 8.0) * scale);
        } else {
            // Roughly bell-shaped, like trained weights.
            w.push((rng.unit() + rng.unit() + rng.unit() - 1.5) * 0.05);
        }
    }
    w
}

impl CudaMasker {
    /// Median time in ms of one kernel launch on `weights` under `rule` (CUDA events, after
    /// warm-up). Every run starts from the original weights, copied on the device outside the
    /// timed region.
    fn time_kernel(
        &self,
        weights: &[f32],
        rows: usize,
        cols: usize,
        norms: Option<&[f32]>,
        rule: &MaskRule,
    ) -> Result<f64, String> {
        use cudarc::driver::sys::CUevent_flags;
        let kernel = Kernel::for_rule(rule, rows, cols)?;
        check_shape(weights, rows, cols, norms, &kernel)?;
        let s = &self.stream;
        let pristine = s.clone_htod(weights).map_err(driver("upload"))?;
        let mut w = s
            .alloc_zeros::<f32>(weights.len())
            .map_err(driver("alloc"))?;
        let a = norms
            .map(|n| s.clone_htod(n))
            .transpose()
            .map_err(driver("upload"))?;
        let c = match &kernel {
            Kernel::Rows(c, _) => Some(s.clone_htod(c).map_err(driver("upload"))?),
            Kernel::NofM(..) => None,
        };
        let event = || {
            s.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver("event"))
        };
        let (start, end) = (event()?, event()?);
        let mut times = Vec::with_capacity(RUNS);
        for run in 0..WARMUP + RUNS {
            s.memcpy_dtod(&pristine, &mut w).map_err(driver("copy"))?;
            start.record(s).map_err(driver("event"))?;
            let launch = Launch {
                w: &mut w,
                norms: a.as_ref(),
                counts: c.as_ref(),
                mask: None,
                rows,
                cols,
            };
            self.launch(launch, &kernel)?;
            end.record(s).map_err(driver("event"))?;
            let ms = start.elapsed_ms(&end).map_err(driver("kernel"))?;
            if run >= WARMUP {
                times.push(ms as f64);
            }
        }
        Ok(median(&mut times))
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written), median of
    /// [`RUNS`] copies of 512 MiB of random bytes.
    fn copy_bandwidth(&self) -> Result<f64, String> {
        use cudarc::driver::sys::CUevent_flags;
        const BYTES: usize = 512 << 20;
        let s = &self.stream;
        let mut rng = Rng(1);
        let host: Vec<u64> = (0..BYTES / 8).map(|_| rng.next()).collect();
        let src = s.clone_htod(&host).map_err(driver("upload"))?;
        let mut dst = s.alloc_zeros::<u64>(host.len()).map_err(driver("alloc"))?;
        let event = || {
            s.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver("event"))
        };
        let (start, end) = (event()?, event()?);
        let mut times = Vec::with_capacity(RUNS);
        for run in 0..WARMUP + RUNS {
            start.record(s).map_err(driver("event"))?;
            s.memcpy_dtod(&src, &mut dst).map_err(driver("copy"))?;
            end.record(s).map_err(driver("event"))?;
            let ms = start.elapsed_ms(&end).map_err(driver("copy"))?;
            if run >= WARMUP {
                times.push(ms as f64);
            }
        }
        Ok(2.0 * BYTES as f64 / (median(&mut times) * 1e-3) / 1e9)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The GPU check: for every shape of [`LLM_SHAPES`] and every case (magnitude and Wanda, row
/// and neuron granularity, 2:4, continuous and 4-bit weights), fresh random data from `seed`,
/// the CUDA and CPU masks and pruned weights compared bit for bit, and the kernel timed with
/// CUDA events against the device's copy bandwidth. Returns a Markdown report and whether every
/// mask was identical; `progress` gets one line per case as it goes.
pub fn gpu_check(seed: u64, mut progress: impl FnMut(&str)) -> Result<(String, bool), String> {
    use super::{magnitude, prune_mask, wanda};
    let masker = CudaMasker::new()?;
    let copy = masker.copy_bandwidth()?;
    let mut out = format!(
        "# CUDA mask kernels on {}\n\nseed {seed}; device-to-device copy: {copy:.0} GB/s \
         (bytes read + written); kernel time: median of {RUNS} launches after {WARMUP} \
         (CUDA events); GB/s: the least the kernel must move (weights read, pruned weights \
         written, norms and counts read) over that time. End to end: upload, kernel and download \
         from the host; CPU: score, mask and zeroing on the CPU path (rayon).\n\n\
         | shape | kernel | ms | GB/s moved | % of copy | end to end ms | CPU ms | masks |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
        masker.device()
    );
    let mut all_identical = true;
    let mut rng = Rng(seed);
    for &(rows, cols) in LLM_SHAPES {
        for case in CASES {
            let w = random_weights(&mut rng, rows, cols, case.quantized);
            let norms: Option<Vec<f32>> = case.wanda.then(|| {
                (0..cols)
                    .map(|j| if j % 97 == 0 { 0.0 } else { 2.0 * rng.unit() })
                    .collect()
            });
            let rule = (case.rule)(rows, &mut rng);

            let clock = std::time::Instant::now();
            let scores = match &norms {
                Some(a) => wanda(&w, a),
                None => magnitude(&w),
            };
            let cpu_mask = prune_mask(&scores, rows, cols, &rule);
            let mut cpu_w = w.clone();
            cpu_mask.apply(&mut cpu_w);
            let cpu_ms = clock.elapsed().as_secs_f64() * 1e3;

            let mut gpu_w = w.clone();
            let clock = std::time::Instant::now();
            let gpu_mask = masker
                .mask(&mut gpu_w, rows, cols, norms.as_deref(), &rule, true)?
                .ok_or("the kernel returned no mask")?;
            let end_to_end_ms = clock.elapsed().as_secs_f64() * 1e3;
            let differing = cpu_mask
                .pruned
                .iter()
                .zip(&gpu_mask.pruned)
                .filter(|(a, b)| a != b)
                .count();
            let weights_differ = cpu_w
                .iter()
                .zip(&gpu_w)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let verdict = if differing == 0 && weights_differ == 0 {
                "identical".to_string()
            } else {
                all_identical = false;
                format!("**DIFFERENT**: {differing} mask entries, {weights_differ} weights")
            };

            let ms = masker.time_kernel(&w, rows, cols, norms.as_deref(), &rule)?;
            let pruned = cpu_mask.count();
            let bytes = 4 * (w.len() + pruned + norms.as_ref().map_or(0, |a| a.len()))
                + if matches!(rule, MaskRule::NofM { .. }) {
                    0
                } else {
                    4 * rows
                };
            let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
            let line = format!(
                "| {rows}×{cols} | {} | {ms:.3} | {gbps:.0} | {:.0}% | {end_to_end_ms:.1} | {cpu_ms:.1} | {verdict} |\n",
                case.label,
                100.0 * gbps / copy
            );
            progress(line.trim_end());
            out += &line;
        }
    }
    out += if all_identical {
        "\nEvery CUDA mask and pruned matrix is identical to the CPU path's.\n"
    } else {
        "\nSOME CUDA MASKS DIFFER FROM THE CPU PATH'S.\n"
    };
    Ok((out, all_identical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::prune::Masker;

    #[test]
    fn row_counts_are_mask_rs_counts_and_tie_orders() {
        let (counts, ties) = row_counts(&MaskRule::Row(0.7), 3, 576).unwrap();
        assert_eq!((counts, ties), (vec![403; 3], Ties::LowerIndexFirst));
        let (counts, ties) = row_counts(&MaskRule::Neuron(vec![0.1, 0.5, 0.9]), 3, 7).unwrap();
        assert_eq!((counts, ties), (vec![1, 4, 7], Ties::HigherIndexFirst));
        assert!(row_counts(&MaskRule::NofM { n: 2, m: 4 }, 3, 8).is_none());
    }

    #[test]
    fn the_kernels_are_built_for_this_cpus_nan() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(cpu_default_nan(), 0xFFC0_0000);
        }
        assert!(f32::from_bits(cpu_default_nan()).is_nan());
        // The CPU path's Wanda score of 0·∞ is that NaN: the kernels must reproduce it.
        let score = crate::prune::wanda(&[0.0], &[f32::INFINITY])[0];
        assert_eq!(score.to_bits(), cpu_default_nan());
    }

    #[test]
    fn no_gpu_is_a_reason_never_a_panic() {
        // SAFETY: only tries to dlopen the driver library.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        match CudaMasker::new() {
            Ok(m) => assert!(driver, "kernels on {} without a driver", m.device()),
            Err(why) => {
                assert!(!why.is_empty());
                if !driver {
                    assert!(why.contains("no CUDA driver"), "{why}");
                }
            }
        }
        let (cpu, why) = Masker::select(Device::Cpu).unwrap();
        assert!(matches!(cpu, Masker::Cpu) && why.is_none());
        match Masker::select(Device::Auto).unwrap() {
            (Masker::Cpu, why) => assert!(why.is_some(), "auto says why it stays on the CPU"),
            (Masker::Cuda(_), why) => assert!(why.is_none()),
        }
        if !driver {
            let e = Masker::select(Device::Cuda)
                .err()
                .expect("--device cuda fails");
            assert!(e.is_usage() && e.to_string().contains("--device"), "{e}");
        }
    }

    #[test]
    fn shapes_the_kernels_cannot_index_are_refused() {
        let w = [0.0f32; 12];
        let rows = |counts: &[u32]| Kernel::Rows(counts.to_vec(), Ties::LowerIndexFirst);
        assert!(check_shape(&w, 3, 4, None, &rows(&[1, 1, 1])).is_ok());
        assert!(check_shape(&w, 4, 4, None, &rows(&[1, 1, 1, 1])).is_err());
        assert!(check_shape(&w, 3, 4, None, &rows(&[1, 1])).is_err());
        assert!(check_shape(&w, 3, 4, Some(&[1.0; 3]), &rows(&[1, 1, 1])).is_err());
        assert!(check_shape(&w, 3, 4, None, &Kernel::NofM(2, 4)).is_ok());
        assert!(check_shape(&w, 2, 6, None, &Kernel::NofM(2, 4)).is_err());
        assert!(check_shape(&w, 3, 4, None, &Kernel::NofM(4, 4)).is_err());
    }
}
