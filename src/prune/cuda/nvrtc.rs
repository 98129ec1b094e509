//! NVRTC: compiles `kernels/*.cu` at run time, to PTX for the virtual architectures
//! ([`compile_ptx_all`], no GPU needed) or to machine code for the device at hand (the masker).
//! Nothing here panics without NVRTC: [`nvrtc_missing`] says why it cannot be used.

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
    source: include_str!("../../../kernels/masks.cu"),
    entries: &[ROWS_ENTRY, N_OF_M_ENTRY],
}];

pub(super) const ROWS_ENTRY: &str = "prune_rows_f32";
pub(super) const N_OF_M_ENTRY: &str = "prune_n_of_m_f32";

/// Virtual architectures [`compile_ptx_all`] compiles for: the oldest CUDA 13 supports (Turing)
/// and Hopper (H100, H200).
pub const PTX_ARCHS: &[&str] = &["compute_75", "compute_90"];

/// The NaN this CPU's multiply makes from 0·∞, which the CPU path's Wanda score holds for such
/// an entry; the kernels are compiled to give the same (x86-64: `0xFFC00000`).
fn cpu_default_nan() -> u32 {
    (std::hint::black_box(0.0f32) * std::hint::black_box(f32::INFINITY)).to_bits()
}

/// Why NVRTC cannot be used, if it cannot.
pub(super) fn nvrtc_missing() -> Option<String> {
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
pub(super) enum Output {
    /// PTX for a virtual architecture (`compute_XY`).
    Ptx,
    /// Machine code for a real one (`sm_XY`); loads on a driver older than this NVRTC within
    /// the same major version, which PTX does not.
    Cubin,
}

/// Compiles `source` for `arch` with NVRTC (which must be present: [`nvrtc_missing`]). Returns
/// the PTX or CUBIN bytes and NVRTC's log (ptxas's resource report with `verbose`).
pub(super) fn nvrtc_compile(
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

#[cfg(test)]
mod tests {
    use super::cpu_default_nan;

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
}
