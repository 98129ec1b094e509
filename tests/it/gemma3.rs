//! The second real model end to end: Gemma 3 270M (another family: four norms per block, QK-norm,
//! sliding-window attention, GeGLU, a single KV head, a 262,144-token tied vocabulary, and a
//! tokenizer that puts `<bos>` before every text). Small calibration and short evaluation, so that
//! the suite stays inside its time budget; the full protocol is `scripts/allocation-table.sh`
//! with `MODEL=gemma3` (docs/results.md, "Second model: Gemma 3 270M").

use crate::harness::{assert_loads_from_another_folder, austen, fixture, prune_ok, scratch};
use neuroal_onnx::calib::TextTokenizer;
use neuroal_onnx::pipeline::inspect;
use serde_json::Value;
use std::path::Path;

/// Calibration on two Austen books (never Persuasion), in small windows.
fn calib_flags(windows: usize, seqlen: usize) -> String {
    format!(
        "--calib {} --calib {} --nsamples {windows} --seqlen {seqlen} --device cpu --quiet",
        austen("emma").display(),
        austen("sense_and_sensibility").display()
    )
}

#[test]
fn the_tokenizer_gives_sentencepieces_ids_and_a_bos_before_every_text() {
    let fx = fixture("gemma3");
    let tokenizer = TextTokenizer::load(&fx.dir, None).unwrap();
    assert_eq!(tokenizer.vocab_size(), 262_144);
    let ids = tokenizer.encode_file(&austen("persuasion")).unwrap();
    // The generator's ids come from the sentencepiece library on a model built from the GGUF's
    // pieces, scores and types: an implementation that shares nothing with `tokenizers`.
    let want: Vec<u32> = fx.manifest["checks"]["persuasion_first_ids"]
        .as_array()
        .expect("persuasion_first_ids in fixture.json")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert!(want.len() >= 32);
    assert_eq!(&ids[..want.len()], want.as_slice());
    let bos = fx.manifest["bos_token_id"].as_u64().unwrap() as u32;
    assert_eq!(tokenizer.window_prefix(), &[bos]);
    assert_ne!(ids[0], bos, "text is tokenized without special tokens");
}

#[test]
fn zero_shot_contexts_start_with_the_bos_and_choices_keep_only_their_own_tokens() {
    use neuroal_onnx::eval::zero_shot::{encode_questions, Question};
    let fx = fixture("gemma3");
    let tokenizer = TextTokenizer::load(&fx.dir, None).unwrap();
    let ids = |text: &str| -> Vec<i64> {
        tokenizer
            .encode(text)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect()
    };
    let questions = [
        Question {
            context: "It is a truth universally".into(),
            choices: vec![" acknowledged".into(), " denied".into()],
            gold: 0,
        },
        Question {
            context: String::new(),
            choices: vec!["Emma".into()],
            gold: 0,
        },
    ];
    let encoded = encode_questions(
        &questions,
        &tokenizer,
        64,
        tokenizer.bos_id(),
        Path::new("t.jsonl"),
    )
    .unwrap();
    let mut want = vec![2];
    want.extend(ids("It is a truth universally"));
    assert_eq!(encoded[0].context(), want.as_slice());
    assert_eq!(encoded[0].choices()[0], ids(" acknowledged"));
    assert_eq!(encoded[0].choices()[1], ids(" denied"));
    // An empty context is the BOS alone.
    assert_eq!(encoded[1].context(), &[2]);
    assert_eq!(encoded[1].choices()[0], ids("Emma"));
    // Cut from the left to fit, the context keeps its BOS.
    let short =
        encode_questions(&questions[..1], &tokenizer, 4, None, Path::new("t.jsonl")).unwrap();
    assert_eq!(short[0].context()[0], 2);
    assert!(short[0].context().len() + short[0].choices().iter().map(Vec::len).max().unwrap() <= 4);
}

/// Zeros in every row of every linear of `out`, with the discovery's module paths.
fn row_zeros(out: &Path) -> Vec<(usize, String, Vec<usize>)> {
    let (model, discovery) = inspect(out).unwrap();
    discovery
        .linears
        .iter()
        .map(|l| {
            let w = l.read_out_in(&model).unwrap();
            let zeros = w
                .chunks(l.in_features)
                .map(|r| r.iter().filter(|&&x| x == 0.0).count())
                .collect();
            (l.block, l.module.clone(), zeros)
        })
        .collect()
}

#[test]
fn wanda_with_neuroal_prunes_gemma3_and_evaluates_it_with_its_bos() {
    let fx = fixture("gemma3");
    let dir = scratch();
    let out = dir.path().join("gemma3-0.7.onnx");
    // Given λ (the search's grid is the same code as on SmolLM2): one alignment pass and the
    // final pass, block and row steps both.
    let flags = format!(
        "--sparsity 0.7 --prune-method wanda --top-up neuroal --neuroal-block-lambda 0.1 --neuroal-row-lambda 0.1 {} --eval-text {} --eval-seqlen 128 --eval-windows 2",
        calib_flags(4, 128),
        austen("persuasion").display()
    );
    let report: Value = prune_ok(&fx.model, &out, &flags);
    assert_loads_from_another_folder(&out);

    let eval = &report["evaluation"][0];
    assert_eq!(eval["window_prefix"], serde_json::json!([2]));
    // Calibration windows start with the BOS too, which counts in their 128 tokens.
    let calibration = &report["calibration"];
    assert_eq!(calibration["window_prefix"], serde_json::json!([2]));
    assert_eq!(calibration["seqlen"], 128);
    let dense = eval["dense"]["perplexity"].as_f64().unwrap();
    let pruned = eval["pruned"]["perplexity"].as_f64().unwrap();
    // A trained base model on clean prose with its BOS (a random one scores near the vocabulary
    // size, and without the BOS it scores far worse: docs/methods.md §4.1).
    assert!((5.0..120.0).contains(&dense), "dense perplexity {dense}");
    assert!(pruned > dense, "pruned {pruned} vs dense {dense}");

    // 18 blocks × 7 linears; the norms (four per block, QK-norm) and the tied embedding stay.
    let rows = row_zeros(&out);
    assert_eq!(rows.len(), 18 * 7);
    let measured = report["sparsity"]["measured"].as_f64().unwrap();
    assert!((measured - 0.7).abs() < 0.005, "measured {measured}");

    // The row step (docs/methods.md §1.5): a producer gets per-row budgets from its consumer only
    // when every producer of that consumer is as wide as its input. o_proj reads q·k·v's
    // attention output, but k and v (one KV head, 256 rows) are narrower than o_proj's 1024
    // inputs, so q, k and v stay uniform in their rows; o_proj (feeding gate and up through the
    // norms and the residual) and gate/up (feeding down) get varied rows, except in the last
    // block, whose outputs no linear of the block reads.
    for (block, module, zeros) in &rows {
        let uniform = zeros.iter().all(|&z| z == zeros[0]);
        let role = module.rsplit('.').next().unwrap();
        let varied_expected = *block < 17 && matches!(role, "o_proj" | "gate_proj" | "up_proj");
        assert_eq!(
            !uniform,
            varied_expected,
            "block {block} {module}: per-row zeros {:?}…",
            &zeros[..zeros.len().min(8)]
        );
    }
}

#[test]
fn self_written_calibration_windows_keep_gemma3s_bos() {
    let fx = fixture("gemma3");
    let dir = scratch();
    let out = dir.path().join("self-written.onnx");
    // No --calib: the model writes its windows, prompted with the BOS that starts every text.
    let report: Value = prune_ok(
        &fx.model,
        &out,
        "--sparsity 0.5 --prune-method wanda --top-up uniform --nsamples 2 --seqlen 16 --device cpu --quiet",
    );
    assert_loads_from_another_folder(&out);
    let calibration = &report["calibration"];
    assert_eq!(calibration["source"], "self_generated");
    assert_eq!(calibration["window_prefix"], serde_json::json!([2]));
    assert_eq!(calibration["seqlen"], 16, "the BOS counts in the window");
}

#[test]
fn every_base_method_and_allocation_runs_on_gemma3() {
    let fx = fixture("gemma3");
    let (_, dense) = inspect(&fx.model).unwrap();
    for (name, extra) in [
        ("sparsegpt-owl", "--prune-method sparsegpt --top-up owl"),
        ("magnitude-alpha", "--prune-method magnitude --top-up alpha"),
        ("wanda-dsnot", "--prune-method wanda --top-up dsnot"),
        (
            "wanda-nm",
            "--prune-method wanda --top-up uniform --nm 2:4 --sparsity 0.5",
        ),
    ] {
        let dir = scratch();
        let out = dir.path().join(format!("{name}.onnx"));
        let sparsity = if extra.contains("--nm") {
            ""
        } else {
            "--sparsity 0.6"
        };
        // Magnitude reads no calibration data (and refuses it).
        let data = if extra.contains("magnitude") {
            "--device cpu --quiet".to_string()
        } else {
            calib_flags(2, 64)
        };
        let flags = format!("{sparsity} {extra} {data}");
        let report = prune_ok(&fx.model, &out, &flags);
        assert_loads_from_another_folder(&out);
        let rows = row_zeros(&out);
        assert_eq!(rows.len(), dense.linears.len(), "{name}");
        let measured = report["sparsity"]["measured"].as_f64().unwrap();
        let target = report["sparsity"]["target"].as_f64().unwrap();
        assert!(
            (measured - target).abs() < 0.01,
            "{name}: measured {measured}, target {target}"
        );
        if name == "wanda-nm" {
            // 2 of every 4 consecutive inputs pruned in every row, the other weights unchanged.
            // The dequantized 4-bit checkpoint holds exact zeros of its own, so a group may
            // end with more than 2 zeros, but never with more than 2 new ones.
            let (dense_model, dense) = inspect(&fx.model).unwrap();
            let (model, discovery) = inspect(&out).unwrap();
            for (before, after) in dense.linears.iter().zip(&discovery.linears) {
                let w0 = before.read_out_in(&dense_model).unwrap();
                let w1 = after.read_out_in(&model).unwrap();
                for (g0, g1) in w0.chunks(4).zip(w1.chunks(4)) {
                    let zeros = g1.iter().filter(|&&x| x == 0.0).count();
                    let new_zeros = g0.iter().zip(g1).filter(|&(&a, &b)| a != 0.0 && b == 0.0);
                    assert!(
                        zeros >= 2 && new_zeros.count() <= 2,
                        "{}: {g0:?} -> {g1:?}",
                        after.module
                    );
                    assert!(g0.iter().zip(g1).all(|(&a, &b)| b == 0.0 || a == b));
                }
            }
        }
    }
}
