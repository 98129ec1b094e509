//! The real model end to end: SmolLM2-135M pruned by magnitude at 70% and evaluated on held-out
//! Austen (Persuasion; calibration books are never used for evaluation).

use crate::harness::{austen, fixture, job, run, scratch};
use neuroal_onnx::calib::TextTokenizer;
use neuroal_onnx::pipeline::inspect;
use neuroal_onnx::prune::row_prune_count;
use serde_json::Value;

#[test]
fn the_tokenizer_matches_the_generators_ids() {
    let fx = fixture("smollm2");
    let tokenizer = TextTokenizer::load(&fx.dir, None).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
    let ids = tokenizer
        .encode_file(&austen("pride_and_prejudice"))
        .unwrap();
    let want: Vec<u32> = fx.manifest["checks"]["first_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&ids[..want.len()], want.as_slice());
}

#[test]
fn magnitude_at_70_percent_on_smollm2() {
    let fx = fixture("smollm2");
    let dir = scratch();
    let out = dir.path().join("smollm2-0.7.onnx");
    let text = austen("persuasion");
    let flags = format!("--sparsity 0.7 --prune-method magnitude --top-up uniform --eval-text {} --seqlen 256 --eval-windows 2 --device cpu --quiet", text.display());
    let r = run(job(
        &fx.model,
        &out,
        &flags.split_whitespace().collect::<Vec<_>>(),
    ))
    .ok();
    assert!(r.stdout.contains("perplexity on"), "{}", r.stdout);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("smollm2-0.7.report.json")).unwrap(),
    )
    .unwrap();
    // Exact global sparsity: floor(0.7·in) pruned in every row of every linear.
    let (_, d) = inspect(&fx.model).unwrap();
    let pruned: usize = d
        .linears
        .iter()
        .map(|l| l.out_features * row_prune_count(l.in_features, 0.7))
        .sum();
    let measured = report["sparsity"]["measured"].as_f64().unwrap();
    let want = pruned as f64 / d.prunable_params() as f64;
    assert!(
        (measured - want).abs() < 1e-9,
        "measured {measured}, want {want}"
    );
    let eval = &report["evaluation"][0];
    let dense = eval["dense"]["perplexity"].as_f64().unwrap();
    let pruned = eval["pruned"]["perplexity"].as_f64().unwrap();
    // A trained model on clean prose; magnitude pruning at 70% hurts it badly (docs/results.md,
    // "Base methods, uniform allocation": 35 dense, about 13,900 pruned).
    assert!((5.0..60.0).contains(&dense), "dense perplexity {dense}");
    assert!(pruned > 2.0 * dense, "pruned {pruned} vs dense {dense}");
    // The pruned model is a valid model with the same linears.
    let (_, after) = inspect(&out).unwrap();
    assert_eq!(after.linears.len(), 210);
}

/// Bit `i` of a mask packed little-endian (numpy `packbits(bitorder="little")`).
fn bit(packed: &[u8], i: usize) -> bool {
    packed[i / 8] >> (i % 8) & 1 == 1
}

#[test]
fn wanda_from_verbatim_windows_equals_an_independent_numpy_wanda() {
    // The generator's float64 numpy Wanda (sequential: each block calibrated on the pruned
    // stream) from the same 4 × 64 windows; `ties.bin` marks scores within 1e-6 of their row's
    // threshold, which float32 may order either way.
    let reference = fixture("wanda-ref");
    let masks = std::fs::read(reference.dir.join("masks.bin")).unwrap();
    let ties = std::fs::read(reference.dir.join("ties.bin")).unwrap();
    let windows = reference.dir.join("windows.json");
    let fx = fixture("smollm2");
    let dir = scratch();
    let out = dir.path().join("wanda.onnx");
    let flags = format!(
        "--sparsity 0.5 --top-up uniform --calib-windows {} --quiet",
        windows.display()
    );
    run(job(
        &fx.model,
        &out,
        &flags.split_whitespace().collect::<Vec<_>>(),
    ))
    .ok();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("wanda.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["calibration"]["source"], "windows");
    assert_eq!(report["calibration"]["windows"], 4);
    assert_eq!(report["calibration"]["seqlen"], 64);

    let (_, discovery) = inspect(&fx.model).unwrap();
    let output = neuroal_onnx::onnx::OnnxModel::load(&out).unwrap();
    let mut differ_by_block = vec![0usize; 30];
    for entry in reference.manifest["layout"].as_array().unwrap() {
        let (block, role) = (
            entry["block"].as_u64().unwrap() as usize,
            entry["role"].as_str().unwrap(),
        );
        let linear = discovery
            .block(block)
            .find(|l| l.role() == role)
            .unwrap_or_else(|| panic!("block {block} {role}"));
        let weights = linear.read_out_in(&output).unwrap();
        let offset = entry["offset"].as_u64().unwrap() as usize;
        let length = entry["length"].as_u64().unwrap() as usize;
        let (want, tie) = (
            &masks[offset..offset + length],
            &ties[offset..offset + length],
        );
        let input = linear.in_features;
        for (row, values) in weights.chunks_exact(input).enumerate() {
            // The dequantized weights hold no zero that Wanda keeps (a zero scores 0), so the
            // output's zeros are the mask.
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, input / 2, "block {block} {role} row {row}");
            for (j, v) in values.iter().enumerate() {
                let i = row * input + j;
                if (*v == 0.0) != bit(want, i) {
                    differ_by_block[block] += 1;
                    assert!(
                        block > 1 || bit(tie, i),
                        "block {block} {role} [{row}, {j}]: the mask differs outside the tie band"
                    );
                }
            }
        }
    }
    // Later blocks drift as float32 swaps of near-ties change the pruned stream (the generator
    // measured at most 27k differing bits per block in a float32 rerun of its own pass); a pass
    // on the dense stream instead of the pruned one differs by 55k–166k bits per block.
    eprintln!("differing mask bits per block: {differ_by_block:?}");
    let worst = differ_by_block.iter().copied().max().unwrap();
    assert!(
        worst < 45_000,
        "differing mask bits per block: {differ_by_block:?}"
    );
}
