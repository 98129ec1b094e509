//! Block index and module name of a linear, from node metadata, node name or initializer name
//! (docs/onnx-layouts.md: torch dynamo, TorchScript/optimum, onnxruntime-genai).

use crate::onnx::proto::NodeProto;
use regex::Regex;
use std::sync::OnceLock;

/// Where a linear sits in the module tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModulePath {
    /// Decoder block index, when the name carries one (`layers.3`, `h.3`, `blocks.3`).
    pub block: Option<usize>,
    /// Module path below the block, dot-joined (`self_attn.q_proj`, `mlp.c_proj`, `fc1`), or the
    /// full path for modules outside the blocks (`lm_head`).
    pub module: String,
}

impl ModulePath {
    /// The last component of the module path (`q_proj`, `c_proj`, `fc1`).
    pub fn role(&self) -> &str {
        self.module.rsplit('.').next().unwrap_or(&self.module)
    }
}

fn block_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?:^|[./])(?:layers|layer|h|blocks|block)\.(\d+)(?:[./]|$)")
            .expect("valid regex")
    })
}

/// Op names that end a scope path without naming a module.
fn is_op_name(s: &str) -> bool {
    let base = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
    matches!(
        base,
        "" | "linear" | "matmul" | "addmm" | "MatMul" | "Gemm" | "Transpose" | "Cast" | "Add"
    )
}

/// Splits a dotted or slashed module path into components, dropping op names and empty parts.
fn components(path: &str, sep: char) -> Vec<&str> {
    path.split(sep).filter(|c| !c.is_empty()).collect()
}

/// The module path of `components`: block from the block pattern, module = what follows it.
fn from_components(parts: &[&str]) -> Option<ModulePath> {
    let parts: Vec<&str> = parts.to_vec();
    let mut end = parts.len();
    while end > 0 && is_op_name(parts[end - 1]) {
        end -= 1;
    }
    let parts = &parts[..end];
    if parts.is_empty() {
        return None;
    }
    // A block component is `layers.N` (slash paths) or `layers`, `N` (dotted paths).
    for i in (0..parts.len()).rev() {
        let joined = if i + 1 < parts.len() {
            format!("{}.{}", parts[i], parts[i + 1])
        } else {
            parts[i].to_string()
        };
        for (candidate, skip) in [(parts[i].to_string(), 1), (joined, 2)] {
            if let Some(c) = block_regex().captures(&format!(".{candidate}.")) {
                if let Ok(block) = c[1].parse() {
                    // Empty for nodes of the block itself (`/model/layers.3/Add_1`).
                    let rest = &parts[(i + skip).min(parts.len())..];
                    return Some(ModulePath {
                        block: Some(block),
                        module: rest.join("."),
                    });
                }
            }
        }
    }
    Some(ModulePath {
        block: None,
        module: parts.join("."),
    })
}

/// Module path from dynamo's `pkg.torch.onnx.name_scopes` metadata, a Python list repr such as
/// `['', 'model', 'model.layers.0', 'model.layers.0.self_attn.q_proj', 'linear']`.
fn from_name_scopes(node: &NodeProto) -> Option<ModulePath> {
    let raw = node
        .metadata_props
        .iter()
        .find(|p| p.key() == "pkg.torch.onnx.name_scopes")?
        .value();
    let scopes: Vec<&str> = raw
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
        .filter(|s| !s.is_empty() && !is_op_name(s))
        .collect();
    // Scopes are either full paths ('model.layers.0.self_attn') or single names ('self_attn').
    let last = scopes.last()?;
    let full = if scopes.iter().all(|s| last.starts_with(s)) {
        last.to_string()
    } else {
        scopes.join(".")
    };
    from_components(&components(&full, '.'))
}

/// Module path from a TorchScript/optimum/genai node name such as
/// `/model/layers.0/self_attn/q_proj/MatMul`.
fn from_node_name(name: &str) -> Option<ModulePath> {
    if !name.contains('/') {
        return None;
    }
    from_components(&components(name, '/'))
}

/// Module path from an initializer name such as `model.layers.0.mlp.fc1.weight` or
/// `model.layers.0.attn.qkv_proj.MatMul.weight`. Anonymous names (`onnx::MatMul_12`) give none.
fn from_initializer(name: &str) -> Option<ModulePath> {
    if name.contains("::") || !name.contains('.') {
        return None;
    }
    let trimmed = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".qweight"))
        .unwrap_or(name);
    from_components(&components(trimmed, '.'))
}

/// The module path of a linear applied by `node` to weight `initializer`: metadata first, then
/// the node name, then the initializer name; the first source that names a block wins, else the
/// first that names anything.
pub fn module_path(node: &NodeProto, initializer: &str) -> Option<ModulePath> {
    let candidates = [
        from_name_scopes(node),
        from_node_name(node.name()),
        from_initializer(initializer),
    ];
    candidates
        .iter()
        .flatten()
        .find(|p| p.block.is_some())
        .or_else(|| candidates.iter().flatten().next())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;

    fn node(name: &str, scopes: Option<&str>) -> NodeProto {
        NodeProto {
            name: Some(name.into()),
            metadata_props: scopes
                .map(|s| {
                    vec![StringStringEntryProto {
                        key: Some("pkg.torch.onnx.name_scopes".into()),
                        value: Some(s.into()),
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn path(block: Option<usize>, module: &str) -> Option<ModulePath> {
        Some(ModulePath {
            block,
            module: module.into(),
        })
    }

    #[test]
    fn torchscript_and_genai_node_names() {
        let cases = [
            (
                "/model/layers.0/self_attn/q_proj/MatMul",
                path(Some(0), "self_attn.q_proj"),
            ),
            (
                "/model/layers.12/mlp/down_proj/MatMul_1",
                path(Some(12), "mlp.down_proj"),
            ),
            ("/decoder/layers.3/fc1/Gemm", path(Some(3), "fc1")),
            (
                "/transformer/h.1/mlp/c_proj/Gemm",
                path(Some(1), "mlp.c_proj"),
            ),
            (
                "/model/layers.4/attn/qkv_proj/MatMul",
                path(Some(4), "attn.qkv_proj"),
            ),
            ("/lm_head/MatMul", path(None, "lm_head")),
            ("/model/layers.29/Add_1", path(Some(29), "")),
        ];
        for (name, want) in cases {
            assert_eq!(
                module_path(&node(name, None), "onnx::MatMul_7"),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn dynamo_metadata_wins_over_opaque_node_names() {
        let n = node(
            "node_linear_3",
            Some("['', 'model', 'model.layers.1', 'model.layers.1.self_attn', 'model.layers.1.self_attn.v_proj', 'linear']"),
        );
        assert_eq!(module_path(&n, "val_12"), path(Some(1), "self_attn.v_proj"));
        let short = node(
            "node_linear",
            Some("['', 'model', 'layers.2', 'mlp', 'up_proj', 'linear']"),
        );
        assert_eq!(module_path(&short, "val_1"), path(Some(2), "mlp.up_proj"));
    }

    #[test]
    fn initializer_names_are_the_last_resort() {
        let n = node("node_linear_9", None);
        assert_eq!(
            module_path(&n, "model.layers.7.self_attn.o_proj.weight"),
            path(Some(7), "self_attn.o_proj")
        );
        assert_eq!(
            module_path(&n, "model.layers.0.attn.qkv_proj.MatMul.weight"),
            path(Some(0), "attn.qkv_proj")
        );
        assert_eq!(module_path(&n, "onnx::MatMul_5"), None);
        assert_eq!(path(Some(0), "mlp.c_proj").unwrap().role(), "c_proj");
    }
}
