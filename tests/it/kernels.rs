//! The CUDA mask kernels without a GPU: every `kernels/*.cu` source compiles to PTX with NVRTC
//! (from `make setup`, in .cache/nvrtc/lib) and defines each entry point; and the kernels' logic,
//! run on the CPU under `kernels/emulate.cpp`, prunes exactly what the CPU path prunes.

use crate::harness::scratch;
use neuroal_onnx::calib::Rng;
use neuroal_onnx::prune::cuda::{row_counts, PTX_ARCHS, SOURCES};
use neuroal_onnx::prune::{magnitude, prune_mask, wanda, MaskRule};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's NVRTC; fails (never skips) with the command to run when it is missing.
fn nvrtc_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/nvrtc/lib");
    assert!(
        dir.join("libnvrtc.so.13").is_file(),
        "NVRTC is missing from {}: run `make setup` (scripts/fetch-nvrtc.sh) first",
        dir.display()
    );
    dir
}

#[test]
fn every_kernel_compiles_to_ptx_with_its_entry_points() {
    let lib = nvrtc_dir();
    let out = scratch();
    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) => std::env::join_paths(std::iter::once(lib).chain(std::env::split_paths(&old)))
            .expect("library path"),
        None => lib.into_os_string(),
    };
    let r = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"))
        .args(["kernels", "--ptx", "--ptx-dir"])
        .arg(out.path())
        .env("LD_LIBRARY_PATH", path)
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert!(
        r.status.success(),
        "kernels --ptx failed:\n{stderr}{stdout}"
    );
    for source in SOURCES {
        let stem = source.file.trim_end_matches(".cu");
        for arch in PTX_ARCHS {
            let file = out.path().join(format!("{stem}.{arch}.ptx"));
            let ptx = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}", file.display()));
            assert!(
                ptx.contains(&format!(".target {}", arch.replace("compute_", "sm_"))),
                "{} is not PTX for {arch}",
                file.display()
            );
            for entry in source.entries {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{}: no .entry {entry}",
                    file.display()
                );
                assert!(stdout.contains(entry), "{entry} not listed: {stdout}");
            }
        }
    }
    // Hidden from the help, which documents the pruning job only.
    let help = Command::new(env!("CARGO_BIN_EXE_neuroal-onnx"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(!String::from_utf8_lossy(&help.stdout).contains("kernels"));
}

/// How a case's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Values {
    /// Continuous, both signs.
    Continuous,
    /// A handful of distinct values: ties everywhere.
    FewDistinct,
    /// Every value the same.
    Constant,
    /// A 4-bit grid per 32 columns, as SmolLM2's Q4_1 weights.
    Quantized,
    /// Continuous with NaN of both signs, infinities, signed zeros and denormals mixed in.
    Special,
}

fn draw(rng: &mut Rng, n: usize, values: Values) -> Vec<f32> {
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7fa0_0001), // signalling NaN with a payload
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(3),
        f32::MIN_POSITIVE,
    ];
    let mut scale = 1.0f32;
    (0..n)
        .map(|i| match values {
            Values::Continuous => (rng.unit() * 2.0 - 1.0) as f32,
            Values::FewDistinct => rng.below(5) as f32 - 2.0,
            Values::Constant => 0.25,
            Values::Quantized => {
                if i % 32 == 0 {
                    scale = 0.01 + rng.unit() as f32 * 0.05;
                }
                (rng.below(16) as f32 - 8.0) * scale
            }
            Values::Special => {
                if rng.below(4) == 0 {
                    specials[rng.below(specials.len() as u64) as usize]
                } else {
                    (rng.unit() * 2.0 - 1.0) as f32
                }
            }
        })
        .collect()
}

struct Case {
    rows: usize,
    cols: usize,
    weights: Vec<f32>,
    norms: Option<Vec<f32>>,
    rule: MaskRule,
}

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
    let mut cases = Vec::new();
    let all = [
        Values::Continuous,
        Values::FewDistinct,
        Values::Constant,
        Values::Quantized,
        Values::Special,
    ];
    // Shapes around the 32-lane warps, the 256-thread tiles and the 11264-key shared cache.
    let shapes = [
        (1, 1),
        (3, 7),
        (5, 64),
        (4, 257),
        (6, 600),
        (3, 2053),
        (2, 11_300),
    ];
    for (s, &(rows, cols)) in shapes.iter().enumerate() {
        for (v, &values) in all.iter().enumerate() {
            let with_norms = (s + v) % 2 == 0;
            let norm_values = if v % 3 == 0 {
                Values::Special
            } else {
                Values::Continuous
            };
            let norms = with_norms.then(|| {
                draw(&mut rng, cols, norm_values)
                    .into_iter()
                    .map(|a| if a.is_nan() { a } else { a.abs() })
                    .collect()
            });
            let sparsity = [0.0, 0.5, 0.7, 0.999, rng.unit()][rng.below(5) as usize];
            let row = MaskRule::Row(sparsity);
            let per_row: Vec<f64> = (0..rows)
                .map(|_| [0.0, 1.0, 0.5, rng.unit()][rng.below(4) as usize])
                .collect();
            for rule in [row, MaskRule::Neuron(per_row)] {
                cases.push(Case {
                    rows,
                    cols,
                    weights: draw(&mut rng, rows * cols, values),
                    norms: norms.clone(),
                    rule,
                });
            }
            for (n, m) in [(2, 4), (0, 4), (3, 8), (5, 16)] {
                let cols = cols.div_ceil(m) * m;
                cases.push(Case {
                    rows,
                    cols,
                    weights: draw(&mut rng, rows * cols, values),
                    norms: with_norms.then(|| {
                        draw(&mut rng, cols, norm_values)
                            .into_iter()
                            .map(|a| a.abs())
                            .collect()
                    }),
                    rule: MaskRule::NofM { n, m },
                });
            }
        }
    }
    cases
}

/// Builds kernels/emulate.cpp with the system's C++ compiler; fails when there is none.
fn build_emulator(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("emulate");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-ffp-contract=off", "-o"])
        .arg(&exe)
        .arg(root.join("kernels/emulate.cpp"))
        .output()
        .unwrap_or_else(|e| panic!("{cxx} (a C++20 compiler, e.g. Debian's g++) is needed: {e}"));
    assert!(
        out.status.success(),
        "kernels/emulate.cpp does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn kernel_logic_prunes_exactly_what_the_cpu_path_prunes() {
    let dir = scratch();
    let exe = build_emulator(dir.path());
    let cases = cases();
    let mut input = Vec::new();
    let put = |buf: &mut Vec<u8>, v: u32| buf.extend_from_slice(&v.to_le_bytes());
    for c in &cases {
        let (kind, p1, p2, counts) = match (&c.rule, row_counts(&c.rule, c.rows, c.cols)) {
            (MaskRule::NofM { n, m }, _) => (1, *n as u32, *m as u32, Vec::new()),
            (_, Some((counts, ties))) => {
                let high = ties == neuroal_onnx::prune::cuda::Ties::HigherIndexFirst;
                (0, u32::from(high), 0, counts)
            }
            (_, None) => unreachable!("every rule has a kernel"),
        };
        for v in [
            kind,
            c.rows as u32,
            c.cols as u32,
            u32::from(c.norms.is_some()),
            p1,
            p2,
        ] {
            put(&mut input, v);
        }
        for w in &c.weights {
            put(&mut input, w.to_bits());
        }
        for a in c.norms.iter().flatten() {
            put(&mut input, a.to_bits());
        }
        for k in counts {
            put(&mut input, k);
        }
    }
    let (cases_file, results_file) = (dir.path().join("cases"), dir.path().join("results"));
    std::fs::write(&cases_file, input).unwrap();
    let out = Command::new(&exe)
        .arg(&cases_file)
        .arg(&results_file)
        .output()
        .expect("the emulator runs");
    assert!(
        out.status.success(),
        "emulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = std::fs::read(&results_file).unwrap();
    let mut at = 0;
    let mut tie_heavy = 0;
    for (i, c) in cases.iter().enumerate() {
        let n = c.rows * c.cols;
        let mask: Vec<bool> = results[at..at + n]
            .iter()
            .map(|&b| {
                assert!(b <= 1, "case {i}: mask entry {b} was never written");
                b == 1
            })
            .collect();
        let weights: Vec<u32> = results[at + n..at + 5 * n]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        at += 5 * n;
        let scores = match &c.norms {
            Some(a) => wanda(&c.weights, a),
            None => magnitude(&c.weights),
        };
        let expected = prune_mask(&scores, c.rows, c.cols, &c.rule);
        let mut expected_weights = c.weights.clone();
        expected.apply(&mut expected_weights);
        let describe = || {
            format!(
                "case {i}: [{}, {}] {:?} norms {}",
                c.rows,
                c.cols,
                c.rule,
                c.norms.is_some()
            )
        };
        if let Some(j) = (0..n).find(|&j| mask[j] != expected.pruned[j]) {
            panic!(
                "{}: entry {j} (score bits {:#010x}) pruned {} by the kernel, {} by the CPU path",
                describe(),
                scores[j].to_bits(),
                mask[j],
                expected.pruned[j]
            );
        }
        let expected_bits: Vec<u32> = expected_weights.iter().map(|w| w.to_bits()).collect();
        assert_eq!(weights, expected_bits, "{}: pruned weights", describe());
        let mut sorted = scores.clone();
        sorted.sort_by(f32::total_cmp);
        if sorted.windows(2).filter(|p| p[0] == p[1]).count() > n / 4 {
            tie_heavy += 1;
        }
    }
    assert_eq!(at, results.len(), "every case's result read");
    assert!(tie_heavy > 20, "the cases exercise ties ({tie_heavy})");
}
