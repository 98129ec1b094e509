//! Traversal of a model's graphs, including the subgraphs held by `If`, `Loop` and `Scan` nodes.
//!
//! A graph is identified by its path: `""` for the main graph, then `node/attribute` segments
//! (`"optimum::if/then_branch"`), with `[i]` for entries of a `graphs` list attribute.

use super::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};

/// Subgraphs nested deeper than this are refused: real exports nest one or two levels.
pub const MAX_GRAPH_DEPTH: usize = 32;

/// The subgraphs held by `node`'s attributes, each with its path segment.
pub fn subgraphs(node: &NodeProto) -> Vec<(String, &GraphProto)> {
    let node_label = node_label(node);
    let mut out = Vec::new();
    for attr in &node.attribute {
        if let Some(g) = &attr.g {
            out.push((format!("{node_label}/{}", attr.name()), g));
        }
        for (i, g) in attr.graphs.iter().enumerate() {
            out.push((format!("{node_label}/{}[{i}]", attr.name()), g));
        }
    }
    out
}

pub(crate) fn node_label(node: &NodeProto) -> String {
    if node.name().is_empty() {
        format!("<{}>", node.op_type())
    } else {
        node.name().to_string()
    }
}

fn join(parent: &str, segment: &str) -> String {
    if parent.is_empty() {
        segment.to_string()
    } else {
        format!("{parent}/{segment}")
    }
}

/// Calls `f(path, graph, depth)` on `graph` and every subgraph below it, parents first.
/// Returns the path of the first graph nested deeper than [`MAX_GRAPH_DEPTH`], if any, and does
/// not descend further there.
pub fn visit_graphs<'a>(
    graph: &'a GraphProto,
    f: &mut impl FnMut(&str, &'a GraphProto, usize),
) -> Result<(), String> {
    fn go<'a>(
        path: &str,
        graph: &'a GraphProto,
        depth: usize,
        f: &mut impl FnMut(&str, &'a GraphProto, usize),
    ) -> Result<(), String> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(path.to_string());
        }
        f(path, graph, depth);
        for node in &graph.node {
            for (segment, sub) in subgraphs(node) {
                go(&join(path, &segment), sub, depth + 1, f)?;
            }
        }
        Ok(())
    }
    go("", graph, 0, f)
}

/// Like [`visit_graphs`], with mutable access. The caller must have checked the depth first.
pub fn visit_graphs_mut(graph: &mut GraphProto, f: &mut impl FnMut(&str, &mut GraphProto)) {
    fn go(path: &str, graph: &mut GraphProto, f: &mut impl FnMut(&str, &mut GraphProto)) {
        f(path, graph);
        for node in &mut graph.node {
            let label = node_label(node);
            for attr in &mut node.attribute {
                let attr_name = attr.name().to_string();
                if let Some(g) = attr.g.as_mut() {
                    go(&join(path, &format!("{label}/{attr_name}")), g, f);
                }
                for (i, g) in attr.graphs.iter_mut().enumerate() {
                    go(&join(path, &format!("{label}/{attr_name}[{i}]")), g, f);
                }
            }
        }
    }
    go("", graph, f)
}

/// The tensors held by one node attribute: `t`, `tensors`, and the values and indices of
/// `sparse_tensor` and `sparse_tensors`.
fn attribute_tensors_mut(attr: &mut AttributeProto) -> impl Iterator<Item = &mut TensorProto> {
    let sparse = attr
        .sparse_tensor
        .iter_mut()
        .chain(attr.sparse_tensors.iter_mut())
        .flat_map(|s| s.values.iter_mut().chain(s.indices.iter_mut()));
    attr.t
        .iter_mut()
        .chain(attr.tensors.iter_mut())
        .chain(sparse)
}

/// Calls `f(label, tensor)` on every tensor held by a node attribute (`Constant`'s `value`,
/// `ConstantOfShape`'s `value`, ...) in `graph` and its subgraphs. `label` names the tensor for
/// errors: its own name, or `node 'N' attribute 'A'` when it has none. Stops at the first error.
pub fn try_visit_attribute_tensors_mut<E>(
    graph: &mut GraphProto,
    f: &mut impl FnMut(&str, &mut TensorProto) -> Result<(), E>,
) -> Result<(), E> {
    let mut failure = None;
    visit_graphs_mut(graph, &mut |_, g| {
        for node in &mut g.node {
            let label = node_label(node);
            for attr in &mut node.attribute {
                let attr_name = attr.name().to_string();
                for tensor in attribute_tensors_mut(attr) {
                    if failure.is_some() {
                        return;
                    }
                    let name = if tensor.name().is_empty() {
                        format!("node '{label}' attribute '{attr_name}'")
                    } else {
                        tensor.name().to_string()
                    };
                    if let Err(e) = f(&name, tensor) {
                        failure = Some(e);
                    }
                }
            }
        }
    });
    failure.map_or(Ok(()), Err)
}
