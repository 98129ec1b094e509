//! The masker: the kernels of `kernels/masks.cu`, compiled by NVRTC for device 0 and launched
//! through cudarc, pruning exactly what [`prune_mask`](crate::prune::prune_mask) prunes; and the
//! measurements a benchmark makes of them (kernel time, the device's copy bandwidth).

use super::nvrtc::{nvrtc_compile, nvrtc_missing, Output, N_OF_M_ENTRY, ROWS_ENTRY, SOURCES};
use crate::calib::SplitMix64;
use crate::prune::mask::{neuron_prune_count, row_prune_count, MaskRule, RowMask};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// `ROW_THREADS` in masks.cu: the block size `prune_rows_f32` is written for.
const ROW_THREADS: u32 = 256;
/// Threads per block of `prune_n_of_m_f32` (one thread per group).
const GROUP_THREADS: u32 = 256;

/// Which of two entries with equal scores is pruned first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ties {
    /// The lower column index (granularity `"row"`, N:M).
    LowerIndexFirst,
    /// The higher column index (granularity `"neuron"`: the lower index is kept first).
    HigherIndexFirst,
}

/// Per-row prune counts and tie order of a per-row rule, as [`prune_mask`](crate::prune::prune_mask)
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
        use crate::prune::{magnitude, prune_mask, wanda};
        let (rows, cols) = (4, 520);
        let mut rng = SplitMix64(7);
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
        let mut norms: Vec<f32> = (0..cols).map(|_| rng.unit_f32()).collect();
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

    /// Prunes under `rule` in place, as [`prune_mask`](crate::prune::prune_mask) then
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

/// Timed runs per kernel and shape (after [`WARMUP_RUNS`] untimed ones); the median is reported.
pub const TIMED_RUNS: usize = 25;
/// Untimed runs before the timed ones.
pub const WARMUP_RUNS: usize = 3;

/// A random `[rows, cols]` matrix like trained weights (roughly bell-shaped), or on a 4-bit
/// grid per 32 columns when `quantized` (as SmolLM2's Q4_1 export: many equal scores): what the
/// kernels are checked on, by the self-test and by `neuroal-onnx kernels --check`.
pub fn random_weights(rng: &mut SplitMix64, rows: usize, cols: usize, quantized: bool) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    let mut scale = 0.0f32;
    for i in 0..rows * cols {
        if quantized {
            if i % 32 == 0 {
                scale = 0.005 + 0.05 * rng.unit_f32();
            }
            w.push(((rng.next_u64() >> 60) as f32 - 8.0) * scale);
        } else {
            // Roughly bell-shaped, like trained weights.
            w.push((rng.unit_f32() + rng.unit_f32() + rng.unit_f32() - 1.5) * 0.05);
        }
    }
    w
}

impl CudaMasker {
    /// Median time in ms of one kernel launch on `weights` under `rule` (CUDA events, after
    /// warm-up). Every run starts from the original weights, copied on the device outside the
    /// timed region.
    pub fn time_kernel(
        &self,
        weights: &[f32],
        rows: usize,
        cols: usize,
        norms: Option<&[f32]>,
        rule: &MaskRule,
    ) -> Result<f64, String> {
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
        self.median_ms(|start, end| {
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
            end.record(s).map_err(driver("event"))
        })
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written), median of
    /// [`TIMED_RUNS`] copies of 512 MiB of random bytes.
    pub fn copy_bandwidth(&self) -> Result<f64, String> {
        const BYTES: usize = 512 << 20;
        let s = &self.stream;
        let mut rng = SplitMix64(1);
        let host: Vec<u64> = (0..BYTES / 8).map(|_| rng.next_u64()).collect();
        let src = s.clone_htod(&host).map_err(driver("upload"))?;
        let mut dst = s.alloc_zeros::<u64>(host.len()).map_err(driver("alloc"))?;
        let ms = self.median_ms(|start, end| {
            start.record(s).map_err(driver("event"))?;
            s.memcpy_dtod(&src, &mut dst).map_err(driver("copy"))?;
            end.record(s).map_err(driver("event"))
        })?;
        Ok(2.0 * BYTES as f64 / (ms * 1e-3) / 1e9)
    }

    /// Median over [`TIMED_RUNS`] runs, after [`WARMUP_RUNS`], of the milliseconds between the
    /// two CUDA events that `run` records around the work it times.
    fn median_ms(
        &self,
        mut run: impl FnMut(&CudaEvent, &CudaEvent) -> Result<(), String>,
    ) -> Result<f64, String> {
        use cudarc::driver::sys::CUevent_flags;
        let event = || {
            self.stream
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver("event"))
        };
        let (start, end) = (event()?, event()?);
        let mut times = Vec::with_capacity(TIMED_RUNS);
        for i in 0..WARMUP_RUNS + TIMED_RUNS {
            run(&start, &end)?;
            let ms = start.elapsed_ms(&end).map_err(driver("timing"))?;
            if i >= WARMUP_RUNS {
                times.push(ms as f64);
            }
        }
        Ok(median(&mut times))
    }
}

/// The middle value (the upper one of an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
