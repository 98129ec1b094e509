//! Activation statistics taken inside a stage model (docs/methods.md §0.3): per-channel sums of a
//! linear's input, computed by ONNX nodes added to the stage so that the activation itself stays
//! with ONNX Runtime. [`ActivationStats`](super::ActivationStats) takes the same sums on the host.

use crate::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto,
};

/// Per-channel sums of one activation `[…, channels]` over its tokens, taken inside a stage
/// model in float64: the stage hands out `2 × channels` numbers and the activation's shape
/// instead of the activation, which stays with ONNX Runtime (on the GPU with the CUDA provider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSums {
    /// The activation (a linear's input).
    pub activation: String,
    /// Its last dimension.
    pub channels: usize,
}

impl ChannelSums {
    /// The stage outputs that hold the sums, in this order: Σ x² and Σ x per channel (float64
    /// `[channels]`), and the activation's shape (int64), whose other dimensions count the tokens.
    pub fn outputs(&self) -> [String; 3] {
        ["sumsq", "sum", "shape"].map(|what| self.name(what))
    }

    fn name(&self, what: &str) -> String {
        format!("{}::{what}", self.activation)
    }

    /// The nodes and initializers that compute [`Self::outputs`] under the default domain's
    /// `opset`: the rows `[tokens, channels]` in float64, squared, and summed over the tokens one
    /// row after the other (the order [`ActivationStats::add`](super::ActivationStats::add) sums in).
    pub fn nodes(&self, opset: i64) -> (Vec<NodeProto>, Vec<TensorProto>) {
        let n = |what: &str| self.name(what);
        let node =
            |op: &str, input: Vec<String>, output: String, attribute: Vec<AttributeProto>| {
                NodeProto {
                    name: Some(format!("{output}::node")),
                    op_type: Some(op.to_string()),
                    input,
                    output: vec![output],
                    attribute,
                    ..Default::default()
                }
            };
        let int = |name: &str, i: i64| AttributeProto {
            name: Some(name.to_string()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(i),
            ..Default::default()
        };
        let int64s = |name: &str, values: Vec<i64>| TensorProto {
            name: Some(n(name)),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            int64_data: values,
            ..Default::default()
        };
        let mut initializers = vec![int64s("rows_shape", vec![-1, self.channels as i64])];
        // ReduceSum takes its axes as an input from opset 13, as an attribute before.
        if opset >= 13 {
            initializers.push(int64s("axes", vec![0]));
        }
        let reduce = |input: String, output: String| {
            if opset >= 13 {
                node(
                    "ReduceSum",
                    vec![input, n("axes")],
                    output,
                    vec![int("keepdims", 0)],
                )
            } else {
                let axes = AttributeProto {
                    name: Some("axes".into()),
                    r#type: Some(AttributeType::Ints as i32),
                    ints: vec![0],
                    ..Default::default()
                };
                node(
                    "ReduceSum",
                    vec![input],
                    output,
                    vec![int("keepdims", 0), axes],
                )
            }
        };
        let [sumsq, sum, shape] = self.outputs();
        let x = self.activation.clone();
        let nodes = vec![
            node("Shape", vec![x.clone()], shape, vec![]),
            node(
                "Cast",
                vec![x],
                n("f64"),
                vec![int("to", DataType::Double as i64)],
            ),
            node(
                "Reshape",
                vec![n("f64"), n("rows_shape")],
                n("rows"),
                vec![],
            ),
            node("Mul", vec![n("rows"), n("rows")], n("squares"), vec![]),
            reduce(n("squares"), sumsq),
            reduce(n("rows"), sum),
        ];
        (nodes, initializers)
    }
}
