//! The pruning command end to end on a tiny model: report, summary, exit codes.

use crate::harness::{austen, fixture, job, prune_ok, run, scratch, snapshot};
use neuroal_onnx::pipeline::{GENERATED_SEQLEN, GENERATED_WINDOWS};
use serde_json::Value;

#[test]
fn magnitude_with_evaluation_writes_model_report_and_summary() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("llama-0.5.onnx");
    let text = austen("persuasion");
    let flags = format!("--sparsity 0.5 --prune-method magnitude --top-up uniform --eval-text {} --seqlen 64 --eval-windows 3 --device cpu --json", text.display());
    let r = run(job(
        &fx.model,
        &out,
        &flags.split_whitespace().collect::<Vec<_>>(),
    ))
    .ok();
    let printed: Value = serde_json::from_str(&r.stdout).expect("--json prints the report");
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("llama-0.5.report.json")).expect("report file"),
    )
    .unwrap();
    assert_eq!(printed, written, "stdout and file hold the same report");
    assert_eq!(written["schema_version"], 2);
    assert_eq!(written["method"]["prune_method"], "magnitude");
    assert_eq!(written["input"]["prunable_linears"], 21);
    assert_eq!(
        written["sparsity"]["per_matrix"].as_array().unwrap().len(),
        21
    );
    assert_eq!(
        written["sparsity"]["per_block"].as_array().unwrap().len(),
        3
    );
    // 64 and 128 columns at 0.5: exactly half of every row.
    assert_eq!(written["sparsity"]["measured"], 0.5);
    let eval = &written["evaluation"][0];
    assert_eq!(eval["dense"]["windows"], 3);
    assert_eq!(eval["pruned"]["seqlen"], 64);
    let (dense, pruned) = (
        eval["dense"]["perplexity"].as_f64().unwrap(),
        eval["pruned"]["perplexity"].as_f64().unwrap(),
    );
    assert!(dense.is_finite() && pruned.is_finite() && dense > 1.0 && pruned > 1.0);
    assert_ne!(
        dense, pruned,
        "pruning half of the weights changes the model"
    );
    assert_eq!(written["onnx_runtime"]["device"], "cpu");
    assert!(
        r.stderr.contains("prune"),
        "progress goes to stderr: {}",
        r.stderr
    );
}

#[test]
fn summary_names_the_outputs_and_quiet_silences_progress() {
    let fx = fixture("tiny/opt");
    let dir = scratch();
    let out = dir.path().join("opt.onnx");
    let r = run(job(
        &fx.model,
        &out,
        &[
            "--sparsity",
            "0.7",
            "--prune-method",
            "magnitude",
            "--top-up",
            "uniform",
            "--quiet",
        ],
    ))
    .ok();
    assert!(r.stderr.is_empty(), "--quiet: {}", r.stderr);
    assert!(
        r.stdout.contains("opt.onnx") && r.stdout.contains("report:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("target 0.7000"), "{}", r.stdout);
}

#[test]
fn zero_shot_without_a_task_file_is_refused_before_any_work() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let base = "--sparsity 0.5 --prune-method magnitude --top-up uniform";
    for (extra, needle) in [
        ("--tasks zero-shot", "needs at least one --task-file"),
        ("--task-file t.jsonl", "is not used with --tasks lm"),
    ] {
        let flags: Vec<&str> = base.split(' ').chain(extra.split(' ')).collect();
        let r = run(job(&fx.model, &out, &flags));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{}", r.stderr);
        assert!(snapshot(dir.path()).is_empty(), "nothing written");
    }
}

/// Runs the tiny LLaMA-like fixture with `flags` and asserts that it is refused as a usage error
/// (exit code 2) whose message names every flag of `names`, before anything is written.
fn assert_refused(flags: &str, names: &[&str]) {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let r = run(job(&fx.model, &out, &flags));
    assert_eq!(r.code, 2, "{flags:?}: exit code 2 expected\n{}", r.stderr);
    for name in names {
        assert!(
            r.stderr.contains(name),
            "{flags:?}: the error names {name}:\n{}",
            r.stderr
        );
    }
    assert!(
        snapshot(dir.path()).is_empty(),
        "{flags:?}: nothing written"
    );
}

#[test]
fn allocation_options_of_another_top_up_are_refused_even_at_their_defaults() {
    let base = "--sparsity 0.5 --prune-method magnitude";
    for (extra, flag, top_up) in [
        ("--owl-m 5 --top-up uniform", "--owl-m", "--top-up uniform"),
        (
            "--owl-lambda 0.08 --top-up alpha",
            "--owl-lambda",
            "--top-up alpha",
        ),
        ("--owl-m 7", "--owl-m", "--top-up neuroal"),
        (
            "--alpha-epsilon 0.3 --top-up owl",
            "--alpha-epsilon",
            "--top-up owl",
        ),
    ] {
        assert_refused(&format!("{base} {extra}"), &[flag, top_up]);
    }
}

#[test]
fn eval_text_without_lm_is_refused_like_task_file_without_zero_shot() {
    let base = "--sparsity 0.5 --prune-method magnitude --top-up uniform";
    for (extra, names) in [
        (
            "--eval-text t.txt --tasks none",
            ["--eval-text", "--tasks none"],
        ),
        (
            "--eval-text t.txt --tasks zero-shot --task-file q.jsonl",
            ["--eval-text", "--tasks zero-shot"],
        ),
        (
            "--task-file q.jsonl --tasks lm",
            ["--task-file", "--tasks lm"],
        ),
    ] {
        assert_refused(&format!("{base} {extra}"), &names);
    }
}

#[test]
fn tasks_take_a_comma_separated_list_of_known_names() {
    let base = "--sparsity 0.5 --prune-method magnitude --top-up uniform";
    // A list that includes zero-shot needs a task file, whichever way it is spelled.
    assert_refused(
        &format!("{base} --tasks lm,zero-shot"),
        &["--tasks", "lm,zero-shot", "--task-file"],
    );
    assert_refused(&format!("{base} --tasks lm,none"), &["--tasks", "none"]);
    // An unknown name is a clap error that lists the accepted ones.
    assert_refused(
        &format!("{base} --tasks lm,mmlu"),
        &["--tasks", "mmlu", "zero-shot"],
    );
}

#[test]
fn owl_options_with_owl_are_used() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("owl.onnx");
    let report = prune_ok(
        &fx.model,
        &out,
        "--sparsity 0.5 --prune-method magnitude --top-up owl --owl-m 7 --owl-lambda 0.05 --quiet",
    );
    assert_eq!(report["method"]["top_up_parameters"]["m"], 7.0);
    assert_eq!(report["method"]["top_up_parameters"]["lambda"], 0.05);
}

#[test]
fn the_plain_command_needs_nothing_but_the_model() {
    // Defaults: Wanda, NeuroAL (both steps), the self-generated calibration size, sampled at
    // temperature 1 within the 0.95 nucleus.
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    run(job(&fx.model, &out, &["--sparsity", "0.7", "--quiet"])).ok();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["method"]["prune_method"], "wanda");
    assert_eq!(report["method"]["top_up"], "neuroal");
    assert_eq!(report["calibration"]["source"], "self_generated");
    assert_eq!(report["calibration"]["windows"], GENERATED_WINDOWS);
    // The tiny model has 256 positions, and the BOS prompt takes one of them.
    assert_eq!(
        report["calibration"]["seqlen"],
        GENERATED_SEQLEN.min(256 - 1)
    );
    assert_eq!(report["calibration"]["sampling"]["temperature"], 1.0);
    assert_eq!(report["calibration"]["sampling"]["top_p"], 0.95);
    assert_eq!(report["search"]["block"].as_array().unwrap().len(), 13 + 1);
    let measured = report["sparsity"]["measured"].as_f64().unwrap();
    assert!((measured - 0.7).abs() < 0.02, "{measured}");

    // Longer windows are capped at the 256 positions of the tiny model's rotary tables, the
    // self-written ones at 255 after their BOS prompt.
    let flags = ["--sparsity", "0.7", "--nsamples", "2", "--seqlen", "1000"];
    let r = run(job(&fx.model, &out, &flags)).ok();
    assert!(
        r.stderr.contains("windows capped at 256 tokens")
            && r.stderr
                .contains("self-written windows capped at 255 tokens"),
        "{}",
        r.stderr
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["calibration"]["seqlen"], 255);
}

#[test]
fn reconstruct_is_refused_where_there_is_no_mask_to_refit() {
    for method in ["sparsegpt", "dense"] {
        assert_refused(
            &format!("--sparsity 0.5 --prune-method {method} --top-up uniform --reconstruct"),
            &["--reconstruct", method],
        );
    }
}

#[test]
fn evo_is_refused_with_sparsegpt_and_its_flags_and_dlp_s_without_them() {
    assert_refused(
        "--sparsity 0.5 --prune-method sparsegpt --top-up evo",
        &["--top-up", "evo", "SparseGPT"],
    );
    assert_refused(
        "--sparsity 0.5 --prune-method wanda --top-up evo --neuroal-step row",
        &["--neuroal-step", "evo", "both", "block"],
    );
    for (flag, owner) in [
        ("--evo-generations 3", "evo"),
        ("--evo-start uniform", "evo"),
        ("--evo-units group", "evo"),
        ("--dlp-alpha 0.1", "dlp"),
    ] {
        let name = flag.split_whitespace().next().unwrap();
        assert_refused(
            &format!("--sparsity 0.5 --top-up neuroal {flag}"),
            &[name, owner],
        );
    }
}

#[test]
fn whole_model_work_beyond_the_memory_budget_is_refused_before_it_starts() {
    let fx = fixture("tiny/llama");
    let dir = scratch();
    let out = dir.path().join("out.onnx");
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 0}\n",
    )
    .unwrap();
    let magnitude = "--sparsity 0.5 --prune-method magnitude --top-up uniform";
    for (flags, instead) in [
        // Self-written calibration opens the whole model.
        (
            "--sparsity 0.5 --nsamples 2 --seqlen 16".to_string(),
            "--calib",
        ),
        // Zero-shot tasks too.
        (
            format!(
                "{magnitude} --tasks zero-shot --task-file {}",
                tasks.display()
            ),
            "--tasks lm",
        ),
    ] {
        let budget = format!("{flags} --memory-budget 1K");
        let r = run(job(&fx.model, &out, &budget.split(' ').collect::<Vec<_>>()));
        assert_eq!(r.code, 1, "{budget}: {}", r.stderr);
        for needle in ["whole model", "--memory-budget of 0.0 GiB", instead] {
            assert!(
                r.stderr.contains(needle),
                "{budget}: no {needle:?} in\n{}",
                r.stderr
            );
        }
        assert_eq!(
            snapshot(dir.path()).keys().collect::<Vec<_>>(),
            ["tasks.jsonl"],
            "{budget}: nothing written"
        );
        // With room for the model the same job runs, and its report states the budget.
        let roomy = format!("{flags} --memory-budget 1G --quiet");
        let report = prune_ok(&fx.model, &out, &roomy);
        assert_eq!(report["memory_budget"]["source"], "flag", "{roomy}");
        assert_eq!(
            report["memory_budget"]["mib"].as_f64(),
            Some(1024.0),
            "{roomy}"
        );
        for written in snapshot(dir.path()).keys().filter(|f| *f != "tasks.jsonl") {
            std::fs::remove_file(dir.path().join(written)).unwrap();
        }
    }
    // Without the flag the budget is the memory available when the job starts.
    let report = prune_ok(&fx.model, &out, &format!("{magnitude} --quiet"));
    assert_eq!(report["memory_budget"]["source"], "available");
    assert!(report["memory_budget"]["mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_memory_budget_that_is_not_a_size_is_a_usage_error() {
    for bad in ["lots", "4X", "0", "-1G"] {
        assert_refused(
            &format!("--sparsity 0.5 --prune-method magnitude --memory-budget={bad}"),
            &["--memory-budget"],
        );
    }
}
