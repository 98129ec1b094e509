//! The JSON Schema of the report, docs/report.schema.json (docs/report.md), generated from the
//! report's types: their doc comments become the descriptions and their `#[schemars(...)]`
//! attributes the constraints. What the types cannot say is added here: every object is closed
//! (`additionalProperties: false`), `timings_s` names its stages, and `method.top_up` decides
//! which allocation parameters, measurements and search a report holds.

use super::Report;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The schema's `$id`.
const ID: &str = "https://neuroal-onnx.dev/report.schema.json";

/// The schema's `title`.
const TITLE: &str = "neuroal-onnx report (OUT.report.json)";

/// The stages of `timings_s`: the key, whether every run has it, and what it times.
const STAGES: &[(&str, bool, &str)] = &[
    (
        "load",
        true,
        "Loading the input model and discovering its blocks and prunable linears, seconds.",
    ),
    (
        "generate_calibration",
        false,
        "Sampling calibration windows from the model itself (calibration.source self_generated), seconds; absent otherwise.",
    ),
    (
        "search",
        false,
        "NeuroAL's search (equal to search.seconds), part of prune, seconds; absent unless --top-up neuroal.",
    ),
    (
        "prune_forward",
        false,
        "ONNX Runtime time of the final block-by-block pruning pass (sessions, prefix and block runs, dense and pruned, with the per-channel sums of the linears' inputs when the stage models take them: calibration.activation_sums); NeuroAL's candidate passes are in search. Part of prune, seconds. Absent when no calibration data was used.",
    ),
    (
        "prune_statistics",
        false,
        "Accumulating the linears' input activation statistics in the final pass (on the host: the per-window sums, unless the stage models took them, and SparseGPT's XᵀX), part of prune, seconds. Absent when no calibration data was used.",
    ),
    (
        "prune_masks",
        false,
        "Scores, masks and weight updates in the final pass, part of prune, seconds. Absent when no calibration data was used.",
    ),
    (
        "prune_write",
        true,
        "Writing each pruned matrix to the output's data file as soon as it is pruned, and compressing it dense and pruned with zstd (deployment), part of prune, seconds.",
    ),
    (
        "prune",
        true,
        "The whole prune stage: the allocation (OWL's dense pass, AlphaPruning's spectra, NeuroAL's search) and the final pruning pass, seconds.",
    ),
    (
        "write",
        true,
        "Finishing the output: copying the tensors that were not pruned to the data file and writing the model file, seconds.",
    ),
    (
        "measure_files",
        true,
        "Hashing the input and output files (SHA-256), seconds.",
    ),
    (
        "evaluate",
        false,
        "Running the dense and the pruned model on every evaluation text and task file, seconds; absent when nothing was evaluated.",
    ),
];

/// The schema of [`Report`] as pretty JSON (draft 2020-12), ending with a newline: what
/// `neuroal-onnx schema` prints and docs/report.schema.json holds.
pub fn json_schema() -> String {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<Report>().to_value();
    close_objects(&mut schema);
    join_lines(&mut schema);
    describe_tags(&mut schema);
    let timings = &mut schema["properties"]["timings_s"];
    *timings = json!({
        "description": timings["description"].clone(),
        "type": "object",
        "additionalProperties": false,
        "required": STAGES.iter().filter(|s| s.1).map(|s| s.0).collect::<Vec<_>>(),
        "properties": STAGES
            .iter()
            .map(|&(name, _, what)| {
                (name.to_string(), json!({"description": what, "type": "number", "minimum": 0}))
            })
            .collect::<Map<_, _>>(),
    });
    let rules = top_up_rules(&schema);
    let (method_rules, report_rules) = rules;
    schema["$defs"]["MethodInfo"]["allOf"] = method_rules;
    schema["allOf"] = report_rules;
    schema["$id"] = ID.into();
    schema["title"] = TITLE.into();
    let mut text = serde_json::to_string_pretty(&schema).expect("a JSON value always serialises");
    text.push('\n');
    text
}

/// Sets `additionalProperties: false` on every object schema that lists its properties: a report
/// holds exactly the fields its types define.
fn close_objects(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), false.into());
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Joins the lines of each description that a doc comment wrapped, keeping its paragraphs.
fn join_lines(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text
                    .split("\n\n")
                    .map(|paragraph| paragraph.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            map.values_mut().for_each(join_lines);
        }
        Value::Array(items) => items.iter_mut().for_each(join_lines),
        _ => {}
    }
}

/// Describes the `top_up` tag that serde adds to each variant of the tagged allocation types.
fn describe_tags(schema: &mut Value) {
    for def in ["TopUpParameters", "AllocationDetail"] {
        if let Some(variants) = schema["$defs"][def]["oneOf"].as_array_mut() {
            for variant in variants {
                let tag = &mut variant["properties"]["top_up"];
                if tag.is_object() && tag.get("description").is_none() {
                    tag["description"] = "The --top-up these belong to.".into();
                }
            }
        }
    }
}

/// The `const` of each variant of the enum at `$defs/<def>`, or of its `top_up` tag.
fn variant_names(schema: &Value, def: &str) -> Vec<String> {
    let def = &schema["$defs"][def];
    let variants = def["oneOf"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = variants
        .iter()
        .filter_map(|v| {
            v["const"]
                .as_str()
                .or_else(|| v["properties"]["top_up"]["const"].as_str())
                .map(str::to_string)
        })
        .collect();
    if let Some(values) = def["enum"].as_array() {
        names.extend(values.iter().filter_map(|v| v.as_str().map(str::to_string)));
    }
    names
}

/// `if` the report's (or the method's, `in_method`) `top_up` is `name`, `then` `field` is `then`.
fn rule(in_method: bool, name: &str, field: &str, then: Value, why: &str) -> Value {
    let top_up = json!({"properties": {"top_up": {"const": name}}});
    json!({
        "description": why,
        "if": if in_method { top_up } else { json!({"properties": {"method": top_up}}) },
        "then": {"properties": {field: then}},
    })
}

/// The rules that tie `method.top_up` to `method.top_up_parameters` (for the method's
/// definition) and to `allocation` and `search` (for the report): each holds the parameters or
/// measurements of that allocation, tagged with its name, or null when it has none.
fn top_up_rules(schema: &Value) -> (Value, Value) {
    let tagged = |def: &str, name: &str| {
        if variant_names(schema, def).iter().any(|n| n == name) {
            json!({"type": "object", "required": ["top_up"], "properties": {"top_up": {"const": name}}})
        } else {
            json!({"type": "null"})
        }
    };
    let (mut method, mut report) = (Vec::new(), Vec::new());
    for name in variant_names(schema, "TopUp") {
        method.push(rule(
            true,
            &name,
            "top_up_parameters",
            tagged("TopUpParameters", &name),
            "top_up_parameters belong to the allocation in top_up.",
        ));
        report.push(rule(
            false,
            &name,
            "allocation",
            tagged("AllocationDetail", &name),
            "allocation holds the measurements of method.top_up, or null when it measures none.",
        ));
        let search = match name.as_str() {
            "neuroal" => json!("object"),
            "evo" => json!(["object", "null"]),
            _ => json!("null"),
        };
        report.push(rule(
            false,
            &name,
            "search",
            json!({"type": search}),
            "--top-up neuroal always reports its search, --top-up evo the block step it starts from (null with --evo-start uniform); every other allocation reports null.",
        ));
    }
    (method.into(), report.into())
}

#[cfg(test)]
mod tests {
    use super::{json_schema, STAGES};
    use serde_json::Value;

    #[test]
    fn the_tagged_allocations_are_tied_to_top_up() {
        let schema: Value = serde_json::from_str(&json_schema()).unwrap();
        let rules = schema["$defs"]["MethodInfo"]["allOf"].as_array().unwrap();
        let then = |name: &str| {
            rules
                .iter()
                .find(|r| r["if"]["properties"]["top_up"]["const"] == name)
                .map(|r| r["then"]["properties"]["top_up_parameters"].clone())
                .unwrap_or_else(|| panic!("no rule for {name}"))
        };
        assert_eq!(then("uniform")["type"], "null");
        assert_eq!(then("owl")["properties"]["top_up"]["const"], "owl");
        // Two report rules (allocation, search) per --top-up.
        assert_eq!(schema["allOf"].as_array().unwrap().len(), 2 * rules.len());
        assert_eq!(rules.len(), 7);
    }

    #[test]
    fn every_object_is_closed_and_timings_name_their_stages() {
        let schema: Value = serde_json::from_str(&json_schema()).unwrap();
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["$defs"]["InputInfo"]["additionalProperties"], false);
        let timings = &schema["properties"]["timings_s"];
        assert_eq!(timings["additionalProperties"], false);
        assert_eq!(
            timings["properties"].as_object().unwrap().len(),
            STAGES.len()
        );
        assert!(timings["required"]
            .as_array()
            .unwrap()
            .contains(&"prune".into()));
    }
}
