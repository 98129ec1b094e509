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
    let dense = eval["dense"]["value"].as_f64().unwrap();
    let pruned = eval["pruned"]["value"].as_f64().unwrap();
    // A trained model on clean prose; magnitude pruning at 70% hurts it badly (spec §5).
    assert!((5.0..60.0).contains(&dense), "dense perplexity {dense}");
    assert!(pruned > 2.0 * dense, "pruned {pruned} vs dense {dense}");
    // The pruned model is a valid model with the same linears.
    let (_, after) = inspect(&out).unwrap();
    assert_eq!(after.linears.len(), 210);
}
