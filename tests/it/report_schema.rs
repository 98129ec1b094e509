//! `docs/report.schema.json`: it is what the report's types generate, the reports of real runs on
//! the tiny fixtures validate against it, broken reports do not, its `schema_version` is the
//! library's, and every property it defines says what it means.

use crate::harness::{austen, fixture, prune_ok, scratch};
use jsonschema::Validator;
use neuroal_onnx::report::SCHEMA_VERSION;
use serde_json::{json, Value};
use std::path::Path;

/// The schema as JSON.
fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// The command that writes docs/report.schema.json from the report's types.
const REGENERATE: &str = "cargo run --release -- schema > docs/report.schema.json";

#[test]
fn the_committed_schema_is_what_the_types_generate() {
    let generated: Value = serde_json::from_str(&neuroal_onnx::report::json_schema())
        .expect("the generated schema is JSON");
    assert!(
        schema() == generated,
        "docs/report.schema.json is not what the report's types generate; regenerate it with `{REGENERATE}`"
    );
}

/// The schema compiled as draft 2020-12 (checked against the draft's meta-schema first).
fn validator() -> Validator {
    jsonschema::draft202012::new(&schema())
        .unwrap_or_else(|e| panic!("docs/report.schema.json is not a valid 2020-12 schema: {e}"))
}

/// Every way `report` fails the schema, one line each.
fn violations(validator: &Validator, report: &Value) -> Vec<String> {
    validator
        .iter_errors(report)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

fn assert_valid(validator: &Validator, report: &Value, run: &str) {
    let errors = violations(validator, report);
    assert!(
        errors.is_empty(),
        "the {run} report does not match docs/report.schema.json (regenerate it with \
         `{REGENERATE}` and update docs/report.md when a field is added or renamed):\n{}\nreport: {report:#}",
        errors.join("\n")
    );
}

/// Prunes the tiny LLaMA-like fixture into `dir` with `flags` and returns its report.
fn tiny_run(dir: &Path, name: &str, flags: &str) -> Value {
    let fx = fixture("tiny/llama");
    prune_ok(
        &fx.model,
        &dir.join(format!("{name}.onnx")),
        &format!("{flags} --quiet"),
    )
}

/// Calibration flags shared by the calibrated runs: short, so each run takes about a second.
fn calib() -> String {
    format!(
        "--calib {} --nsamples 6 --seqlen 48",
        austen("emma").display()
    )
}

fn eval_text() -> String {
    format!(
        "--eval-text {} --eval-windows 2",
        austen("persuasion").display()
    )
}

#[test]
fn a_neuroal_run_with_search_and_evaluation_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "neuroal",
        &format!(
            "--sparsity 0.6 --prune-method wanda --top-up neuroal {} {}",
            calib(),
            eval_text()
        ),
    );
    assert_valid(&validator(), &report, "neuroal");
    assert!(report["search"]["block"]
        .as_array()
        .is_some_and(|b| !b.is_empty()));
    assert!(report["search"]["row_lambda"].is_f64());
    assert_eq!(report["evaluation"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["calibration"]["source"], "text");
}

#[test]
fn an_owl_run_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "owl",
        &format!(
            "--sparsity 0.6 --prune-method wanda --top-up owl {} {}",
            calib(),
            eval_text()
        ),
    );
    assert_valid(&validator(), &report, "owl");
    assert_eq!(report["allocation"]["top_up"], "owl");
    assert!(report["search"].is_null());
}

#[test]
fn a_dlp_run_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "dlp",
        &format!(
            "--sparsity 0.6 --prune-method sparsegpt --top-up dlp {}",
            calib()
        ),
    );
    assert_valid(&validator(), &report, "dlp");
    assert_eq!(report["allocation"]["top_up"], "dlp");
    assert_eq!(report["method"]["top_up_parameters"]["alpha"], 0.15);
}

#[test]
fn an_evo_run_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "evo",
        &format!(
            "--sparsity 0.6 --prune-method wanda --top-up evo --evo-units group --neuroal-step both --evo-generations 2 {}",
            calib()
        ),
    );
    assert_valid(&validator(), &report, "evo");
    assert_eq!(report["allocation"]["top_up"], "evo");
    assert_eq!(report["method"]["top_up_parameters"]["top_up"], "evo");
    assert_eq!(report["method"]["top_up_parameters"]["units"], "group");
    // NeuroAL's block step as the start, its row step after the search (--neuroal-step both).
    assert!(report["search"]["block_lambda"].is_f64());
    assert!(report["search"]["row_lambda"].is_f64());
    assert_eq!(report["method"]["top_up_parameters"]["step"], "both");
    assert_eq!(
        report["allocation"]["generations"].as_array().map(Vec::len),
        Some(2)
    );
    let uniform = tiny_run(
        dir.path(),
        "evo-uniform",
        &format!(
            "--sparsity 0.6 --prune-method magnitude --top-up evo --evo-start uniform --neuroal-step block --evo-generations 1 {}",
            calib()
        ),
    );
    assert_valid(&validator(), &uniform, "evo from uniform");
    assert!(uniform["search"].is_null(), "no NeuroAL step ran");
    // By default: NeuroAL's block step, the search per block, no row step after it.
    let default = tiny_run(
        dir.path(),
        "evo-default",
        &format!(
            "--sparsity 0.6 --prune-method wanda --top-up evo --evo-generations 1 {}",
            calib()
        ),
    );
    assert_valid(&validator(), &default, "evo by default");
    let parameters = &default["method"]["top_up_parameters"];
    assert_eq!(
        (&parameters["step"], &parameters["units"]),
        (&"block".into(), &"block".into())
    );
    assert!(default["search"]["block_lambda"].is_f64());
    assert!(default["search"]["row_lambda"].is_null());
}

#[test]
fn an_alpha_run_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "alpha",
        &format!(
            "--sparsity 0.6 --prune-method wanda --top-up alpha {}",
            calib()
        ),
    );
    assert_valid(&validator(), &report, "alpha");
    assert_eq!(report["allocation"]["top_up"], "alpha");
    assert_eq!(report["evaluation"], json!([]));
}

#[test]
fn a_magnitude_run_without_calibration_or_evaluation_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "magnitude",
        "--sparsity 0.6 --prune-method magnitude --top-up uniform",
    );
    assert_valid(&validator(), &report, "magnitude/uniform");
    for absent in ["onnx_runtime", "calibration", "allocation", "search"] {
        assert!(report[absent].is_null(), "{absent}: {}", report[absent]);
    }
    assert_eq!(report["evaluation"], json!([]));
    assert_eq!(report["zero_shot"], json!([]));
}

#[test]
fn a_self_calibrated_two_four_run_validates() {
    let dir = scratch();
    let report = tiny_run(
        dir.path(),
        "nm",
        "--sparsity 0.5 --nm 2:4 --prune-method wanda --top-up uniform --nsamples 6 --seqlen 48",
    );
    assert_valid(&validator(), &report, "2:4, self-generated calibration");
    assert_eq!(report["method"]["nm"], "2:4");
    assert_eq!(report["calibration"]["source"], "self_generated");
}

#[test]
fn a_zero_shot_run_validates() {
    let dir = scratch();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        concat!(
            r#"{"context": "abc", "choices": [" d", " e"], "gold": 0}"#,
            "\n",
            r#"{"context": "The cat sat on the", "choices": [" mat", " sky", " dog"], "gold": 0}"#,
            "\n",
        ),
    )
    .unwrap();
    let report = tiny_run(
        dir.path(),
        "zero_shot",
        &format!(
            "--sparsity 0.6 --prune-method magnitude --top-up uniform --seqlen 48 --tasks both --task-file {} {}",
            tasks.display(),
            eval_text()
        ),
    );
    assert_valid(&validator(), &report, "zero-shot");
    assert_eq!(report["zero_shot"][0]["items"], 2);
    assert_eq!(report["evaluation"].as_array().map(Vec::len), Some(1));
}

/// Sets the value at JSON pointer `pointer` (its parent must exist).
fn set(report: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match report.pointer_mut(parent).unwrap() {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(list) => list[key.parse::<usize>().unwrap()] = value,
        other => panic!("{parent} is {other}"),
    }
}

/// Removes the field at JSON pointer `pointer`.
fn remove(report: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let removed = report
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(key));
    assert!(removed.is_some(), "{pointer} is not in the report");
}

#[test]
fn the_schema_rejects_broken_reports() {
    let dir = scratch();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"context\": \"abc\", \"choices\": [\" d\", \" e\"], \"gold\": 0}\n",
    )
    .unwrap();
    let valid = tiny_run(
        dir.path(),
        "base",
        &format!(
            "--sparsity 0.6 --prune-method magnitude --top-up uniform --seqlen 48 --tasks both --task-file {} {}",
            tasks.display(),
            eval_text()
        ),
    );
    let validator = validator();
    assert_valid(&validator, &valid, "unbroken");

    type Break = Box<dyn Fn(&mut Value)>;
    // (what, how, where the schema must complain: the JSON pointer of the field or its parent)
    let cases: Vec<(&str, Break, &str)> = vec![
        (
            "required top-level field removed",
            Box::new(|r| remove(r, "/schema_version")),
            "",
        ),
        (
            "required nested field removed",
            Box::new(|r| remove(r, "/sparsity/measured")),
            "/sparsity",
        ),
        (
            "required field removed in a list item",
            Box::new(|r| remove(r, "/evaluation/0/agreement/kl_divergence")),
            "/evaluation/0/agreement",
        ),
        (
            "unknown top-level field",
            Box::new(|r| set(r, "/extra", json!(1))),
            "",
        ),
        (
            "unknown nested field",
            Box::new(|r| set(r, "/method/sparsity_target", json!(0.6))),
            "/method",
        ),
        (
            "unknown stage in timings_s",
            Box::new(|r| set(r, "/timings_s/tokenize", json!(0.1))),
            "/timings_s",
        ),
        (
            "string for a number",
            Box::new(|r| set(r, "/evaluation/0/pruned/perplexity", json!("12.3"))),
            "/evaluation/0/pruned/perplexity",
        ),
        (
            "string for an integer",
            Box::new(|r| set(r, "/input/blocks", json!("3"))),
            "/input/blocks",
        ),
        (
            "fraction for an integer",
            Box::new(|r| set(r, "/input/prunable_params", json!(1.5))),
            "/input/prunable_params",
        ),
        (
            "measured sparsity of 1.5",
            Box::new(|r| set(r, "/sparsity/measured", json!(1.5))),
            "/sparsity/measured",
        ),
        (
            "matrix sparsity of 1.5",
            Box::new(|r| set(r, "/sparsity/per_matrix/0/measured", json!(1.5))),
            "/sparsity/per_matrix/0/measured",
        ),
        (
            "target sparsity of 1",
            Box::new(|r| set(r, "/method/sparsity", json!(1.0))),
            "/method/sparsity",
        ),
        (
            "negative KL divergence",
            Box::new(|r| set(r, "/evaluation/0/agreement/kl_divergence", json!(-0.1))),
            "/evaluation/0/agreement/kl_divergence",
        ),
        (
            "accuracy above 1",
            Box::new(|r| set(r, "/zero_shot/0/pruned/acc", json!(2))),
            "/zero_shot/0/pruned/acc",
        ),
        (
            "null where the field is not optional",
            Box::new(|r| set(r, "/deployment", Value::Null)),
            "/deployment",
        ),
        (
            "object where null is required",
            Box::new(|r| set(r, "/search", json!({}))),
            "/search",
        ),
        (
            "another schema_version",
            Box::new(|r| set(r, "/schema_version", json!(SCHEMA_VERSION + 1))),
            "/schema_version",
        ),
        (
            "unknown prune method",
            Box::new(|r| set(r, "/method/prune_method", json!("random"))),
            "/method/prune_method",
        ),
        // A nullable object is `anyOf: [object, null]`: the complaint names the object.
        (
            "unknown device",
            Box::new(|r| set(r, "/onnx_runtime/device", json!("tpu"))),
            "/onnx_runtime",
        ),
        (
            "N:M not written N:M",
            Box::new(|r| set(r, "/method/nm", json!("2/4"))),
            "/method/nm",
        ),
        (
            "uppercase SHA-256",
            Box::new(|r| {
                let upper = r["output"]["files"][0]["sha256"]
                    .as_str()
                    .unwrap()
                    .to_uppercase();
                set(r, "/output/files/0/sha256", json!(upper))
            }),
            "/output/files/0/sha256",
        ),
        (
            "short SHA-256",
            Box::new(|r| set(r, "/input/files/0/sha256", json!("abc123"))),
            "/input/files/0/sha256",
        ),
        (
            "a 3-D shape",
            Box::new(|r| set(r, "/sparsity/per_matrix/0/shape", json!([1, 2, 3]))),
            "/sparsity/per_matrix/0/shape",
        ),
        (
            "parameters of another allocation",
            Box::new(|r| {
                set(
                    r,
                    "/method/top_up_parameters",
                    json!({"top_up": "alpha", "epsilon": 0.3}),
                )
            }),
            "/method/top_up_parameters",
        ),
        (
            "OWL measurements with --top-up uniform",
            Box::new(|r| {
                set(
                    r,
                    "/allocation",
                    json!({
                        "top_up": "owl", "m": 5.0, "lambda": 0.08, "outlier_ratio": [1.0], "sparsity": [0.6]
                    }),
                )
            }),
            "/allocation",
        ),
    ];
    for (what, mutate, at) in &cases {
        let mut broken = valid.clone();
        mutate(&mut broken);
        let errors = violations(&validator, &broken);
        assert!(
            !errors.is_empty(),
            "the schema accepts a report with {what}"
        );
        assert!(
            errors.iter().any(|e| e.split(": ").next() == Some(*at)),
            "{what}: expected a complaint about '{at}', got:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn the_schema_version_is_the_librarys() {
    let schema = schema();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the schema is written for draft 2020-12"
    );
    assert_eq!(
        schema["properties"]["schema_version"]["const"],
        json!(SCHEMA_VERSION),
        "docs/report.schema.json describes another schema_version than neuroal_onnx::report::SCHEMA_VERSION"
    );
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&json!("schema_version")));
}

/// Collects the JSON pointer of every property definition under `node` that has no non-empty
/// `description`, and counts the definitions seen. The subschemas of `if`/`then`/`else` only
/// restate constraints on properties defined elsewhere and are not walked.
fn undescribed(node: &Value, at: &str, seen: &mut usize, missing: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, def) in props {
                    *seen += 1;
                    let described = def["description"]
                        .as_str()
                        .is_some_and(|d| !d.trim().is_empty());
                    if !described {
                        missing.push(format!("{at}/properties/{name}"));
                    }
                }
            }
            if let Some(Value::Object(defs)) = map.get("$defs") {
                for (name, def) in defs {
                    if def["description"]
                        .as_str()
                        .is_none_or(|d| d.trim().is_empty())
                    {
                        missing.push(format!("{at}/$defs/{name}"));
                    }
                }
            }
            for (key, child) in map {
                if !matches!(key.as_str(), "if" | "then" | "else") {
                    undescribed(child, &format!("{at}/{key}"), seen, missing);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                undescribed(child, &format!("{at}/{i}"), seen, missing);
            }
        }
        _ => {}
    }
}

#[test]
fn every_property_in_the_schema_is_described() {
    let schema = schema();
    for key in ["title", "description"] {
        assert!(
            schema[key].as_str().is_some_and(|s| !s.trim().is_empty()),
            "the schema has no {key}"
        );
    }
    let (mut seen, mut missing) = (0, Vec::new());
    undescribed(&schema, "", &mut seen, &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:?}"
    );
    // The report has 17 top-level fields and about a hundred nested ones: the walk saw them.
    assert!(seen >= 90, "only {seen} property definitions found");
}
