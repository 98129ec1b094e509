//! Traversal of a model's graphs, including the subgraphs held by `If`, `Loop` and `Scan` nodes.
//!
//! A graph is identified by its path: `""` for the main graph, then `node/attribute` segments
//! (`"optimum::if/then_branch"`), with `[i]` for entries of a `graphs` list attribute.

use super::proto::{GraphProto, NodeProto};

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
