//! The hidden `kernels` subcommand (scripts/gpu-check.sh, kernels/README.md): compile the CUDA
//! kernels to PTX and report their resources, or check them against the CPU path on a GPU and
//! time them.

use crate::cli::KernelsArgs;
use neuroal_onnx::calib::SplitMix64;
use neuroal_onnx::prune::cuda::{
    self, random_weights, CudaMasker, LLM_SHAPES, TIMED_RUNS, WARMUP_RUNS,
};
use neuroal_onnx::prune::{magnitude, prune_mask, wanda, MaskRule};
use std::process::ExitCode;

/// Runs the subcommand: compile the CUDA kernels to PTX, or check them on a GPU.
/// Exit code 1 on any failure, including a CUDA mask that differs from the CPU path's.
pub fn run(args: &KernelsArgs) -> ExitCode {
    let result = if args.ptx {
        cuda::compile_ptx_all().and_then(|all| {
            for (name, ptx) in &all {
                let source = cuda::SOURCES
                    .iter()
                    .find(|s| name.starts_with(s.file))
                    .ok_or_else(|| format!("{name}: unknown source"))?;
                let missing: Vec<&str> = source
                    .entries
                    .iter()
                    .filter(|e| !ptx.contains(&format!(".entry {e}(")))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    return Err(format!("{name}: no .entry {}", missing.join(", ")));
                }
                println!(
                    "{name}\t{} bytes of PTX\t{}",
                    ptx.len(),
                    source.entries.join(" ")
                );
                if let Some(dir) = &args.ptx_dir {
                    let file = dir.join(format!("{}.ptx", name.replace(".cu ", ".")));
                    std::fs::create_dir_all(dir)
                        .and_then(|_| std::fs::write(&file, ptx))
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                }
            }
            // Registers, shared memory and spills: the resource report costs no GPU time.
            for (name, log) in cuda::resource_report()? {
                let mut entry = "";
                for line in log.lines() {
                    if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                        entry = rest.split('\'').next().unwrap_or_default();
                    } else if line.contains("Used ") || line.contains("spill") {
                        let what = line.rsplit([':', '.']).next().unwrap_or(line).trim();
                        println!("{name}\t{entry}\t{what}");
                    }
                }
            }
            Ok(())
        })
    } else {
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        gpu_check(seed, |line| eprintln!("{line}")).and_then(|(table, identical)| {
            println!("{table}");
            if let Some(out) = &args.out {
                std::fs::write(out, &table).map_err(|e| format!("{}: {e}", out.display()))?;
            }
            if identical {
                Ok(())
            } else {
                Err("CUDA and CPU masks differ".into())
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One row of the check: a score, a rule and how the weights are drawn.
struct Case {
    label: &'static str,
    wanda: bool,
    /// Weights on a 4-bit grid per 32 columns (as SmolLM2's Q4_1 export): many equal scores.
    quantized: bool,
    rule: fn(usize, &mut SplitMix64) -> MaskRule,
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
            MaskRule::Neuron(
                (0..rows)
                    .map(|_| 0.4 + 0.55 * rng.unit_f32() as f64)
                    .collect(),
            )
        },
    },
    Case {
        label: "n:m, wanda, 2:4",
        wanda: true,
        quantized: false,
        rule: |_, _| MaskRule::NofM { n: 2, m: 4 },
    },
];

/// The GPU check: for every shape of [`LLM_SHAPES`] and every case (magnitude and Wanda, row
/// and neuron granularity, 2:4, continuous and 4-bit weights), fresh random data from `seed`,
/// the CUDA and CPU masks and pruned weights compared bit for bit, and the kernel timed with
/// CUDA events against the device's copy bandwidth. Returns a Markdown report and whether every
/// mask was identical; `progress` gets one line per case as it goes.
fn gpu_check(seed: u64, mut progress: impl FnMut(&str)) -> Result<(String, bool), String> {
    let masker = CudaMasker::new()?;
    let copy = masker.copy_bandwidth()?;
    let mut out = format!(
        "# CUDA mask kernels on {}\n\nseed {seed}; device-to-device copy: {copy:.0} GB/s \
         (bytes read + written); kernel time: median of {TIMED_RUNS} launches after {WARMUP_RUNS} \
         (CUDA events); GB/s: the least the kernel must move (weights read, pruned weights \
         written, norms and counts read) over that time. End to end: upload, kernel and download \
         from the host; CPU: score, mask and zeroing on the CPU path (rayon).\n\n\
         | shape | kernel | ms | GB/s moved | % of copy | end to end ms | CPU ms | masks |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
        masker.device()
    );
    let mut all_identical = true;
    let mut rng = SplitMix64(seed);
    for &(rows, cols) in LLM_SHAPES {
        for case in CASES {
            let w = random_weights(&mut rng, rows, cols, case.quantized);
            let norms: Option<Vec<f32>> = case.wanda.then(|| {
                (0..cols)
                    .map(|j| {
                        if j % 97 == 0 {
                            0.0
                        } else {
                            2.0 * rng.unit_f32()
                        }
                    })
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
