//! Discovery against the generator's manifests: every exporter convention gives the blocks,
//! linears, layouts and exclusions the generator built.

use crate::harness::{fixture, run, tiny_fixtures, Fixture};
use neuroal_onnx::graph::{ExclusionReason, Layout};
use neuroal_onnx::pipeline::inspect;
use std::collections::BTreeMap;

fn expected_reason(reasons: &[&str]) -> ExclusionReason {
    if reasons.contains(&"quantized") {
        ExclusionReason::Quantized
    } else if reasons.contains(&"tied") {
        ExclusionReason::Tied
    } else if reasons.contains(&"lm_head") {
        ExclusionReason::LmHead
    } else {
        assert_eq!(reasons, ["embedding"], "unknown manifest reasons");
        ExclusionReason::Embedding
    }
}

fn check_against_manifest(fx: &Fixture) {
    let (_, d) = inspect(&fx.model).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    let m = &fx.manifest;
    assert_eq!(
        d.n_blocks as u64,
        m["n_blocks"].as_u64().unwrap(),
        "{}: blocks",
        fx.name
    );
    let want = m["linears"].as_array().unwrap();
    assert_eq!(
        d.linears.len(),
        want.len(),
        "{}: number of linears",
        fx.name
    );
    for (got, want) in d.linears.iter().zip(want) {
        let ctx = format!("{} {}", fx.name, want["node"]);
        assert_eq!(
            got.block as u64,
            want["block"].as_u64().unwrap(),
            "{ctx}: block"
        );
        assert_eq!(
            got.module,
            want["module"].as_str().unwrap(),
            "{ctx}: module"
        );
        assert_eq!(got.role(), want["role"].as_str().unwrap(), "{ctx}: role");
        assert_eq!(
            got.weight.name,
            want["initializer"].as_str().unwrap(),
            "{ctx}: initializer"
        );
        assert_eq!(
            got.out_features as u64,
            want["out"].as_u64().unwrap(),
            "{ctx}: out"
        );
        assert_eq!(
            got.in_features as u64,
            want["in"].as_u64().unwrap(),
            "{ctx}: in"
        );
        let layout = match want["stored_layout"].as_str().unwrap() {
            "in_out" => Layout::InOut,
            "out_in" => Layout::OutIn,
            other => panic!("{ctx}: layout {other}"),
        };
        assert_eq!(got.layout, layout, "{ctx}: layout");
        let dtype = serde_json::to_value(got.dtype).unwrap();
        assert_eq!(dtype, want["weight_dtype"], "{ctx}: dtype");
        let graphs = want["graphs"].as_array().map_or(1, Vec::len);
        assert_eq!(
            got.nodes.len(),
            graphs,
            "{ctx}: one node per graph applying the weight"
        );
        assert!(
            got.nodes
                .iter()
                .all(|n| n.name == want["node"].as_str().unwrap()),
            "{ctx}: node"
        );
    }
    let mut want_excluded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in m["excluded"].as_array().unwrap() {
        want_excluded
            .entry(e["initializer"].as_str().unwrap())
            .or_default()
            .push(e["reason"].as_str().unwrap());
    }
    let got_excluded: BTreeMap<&str, ExclusionReason> = d
        .excluded
        .iter()
        .map(|e| (e.weight.name.as_str(), e.reason))
        .collect();
    let want_reasons: BTreeMap<&str, ExclusionReason> = want_excluded
        .iter()
        .map(|(k, v)| (*k, expected_reason(v)))
        .collect();
    assert_eq!(got_excluded, want_reasons, "{}: excluded weights", fx.name);
}

#[test]
fn every_exporter_convention_matches_its_manifest() {
    for fx in tiny_fixtures() {
        check_against_manifest(&fx);
    }
}

#[test]
fn smollm2_has_30_blocks_of_7_linears_and_its_tied_embedding_is_left_alone() {
    let fx = fixture("smollm2");
    check_against_manifest(&fx);
    let (_, d) = inspect(&fx.model).unwrap();
    assert_eq!((d.n_blocks, d.linears.len()), (30, 210));
    let shapes: Vec<(String, usize, usize)> = d
        .block(0)
        .map(|l| (l.role().to_string(), l.out_features, l.in_features))
        .collect();
    let want = [
        ("q_proj", 576, 576),
        ("k_proj", 192, 576),
        ("v_proj", 192, 576),
        ("o_proj", 576, 576),
        ("gate_proj", 1536, 576),
        ("up_proj", 1536, 576),
        ("down_proj", 576, 1536),
    ];
    let want: Vec<(String, usize, usize)> = want
        .iter()
        .map(|(r, o, i)| (r.to_string(), *o, *i))
        .collect();
    assert_eq!(shapes, want);
    let tied = d
        .excluded
        .iter()
        .find(|e| e.weight.name == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(tied.reason, ExclusionReason::Tied);
    assert_eq!(tied.shape, vec![49152, 576]);
}

#[test]
fn inspect_prints_a_table_and_json() {
    let fx = fixture("tiny/llama-merged");
    let table = run(["inspect".as_ref(), fx.model.as_os_str()]).ok();
    assert!(
        table.stdout.starts_with("2 blocks, 14 prunable linears"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("LM head tied to the token embedding"),
        "{}",
        table.stdout
    );
    let json = run(["inspect".as_ref(), fx.model.as_os_str(), "--json".as_ref()]).ok();
    let v: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("inspect --json prints JSON");
    assert_eq!(v["n_blocks"], 2);
    assert_eq!(v["linears"].as_array().unwrap().len(), 14);
    let nodes = v["linears"][0]["nodes"].as_array().unwrap();
    let graphs: Vec<&str> = nodes.iter().map(|n| n["graph"].as_str().unwrap()).collect();
    assert_eq!(
        graphs.len(),
        2,
        "the merged decoder applies each weight in both If branches"
    );
    assert!(
        graphs.iter().all(|g| g.starts_with("optimum::if/")),
        "{graphs:?}"
    );
}
