//! ONNX files: the protobuf types, loading with external data, tensor decoding, and writing.
//!
//! This is the only module that touches the protobuf types' storage details; the rest of the crate
//! asks it for a tensor's little-endian bytes and hands it replacement bytes to write.

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;

mod companions;
mod dtype;
mod external;
mod model;
mod save;
mod walk;

pub use companions::{companions, Companion, GENAI_CONFIG};
pub use dtype::{data_type_name, WeightDtype};
pub use model::{default_opset, OnnxModel, TensorBytes, TensorKey};
pub use save::{check_not_an_input, data_file_for, ModelWriter, NodeAt, SaveOptions, SavedModel};
pub use walk::{subgraphs, visit_graphs, visit_graphs_mut, MAX_GRAPH_DEPTH};
