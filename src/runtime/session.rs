//! ONNX Runtime sessions run with named inputs and selected outputs, and the tensors they take
//! and give (stage inputs and outputs, captured activations, weights fed as inputs).

use super::Runtime;
use crate::error::{Error, Result};
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::{type_proto, ModelProto, TensorShapeProto, TypeProto};
use crate::onnx::WeightDtype;
use ndarray::{ArrayD, IxDyn};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};
use prost::Message;
use std::borrow::Cow;
use std::path::Path;

/// A tensor held by ONNX Runtime: a stage's input or output (hidden states, masks, captured
/// linear inputs, weights fed as inputs).
pub struct Activation(DynValue);

fn runtime_err(e: impl std::fmt::Display) -> Error {
    Error::Runtime(e.to_string())
}

impl Activation {
    /// A tensor holding `array`.
    pub fn from_array<T>(array: ArrayD<T>) -> Result<Self>
    where
        T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    {
        Ok(Self(
            Tensor::from_array(array).map_err(runtime_err)?.into_dyn(),
        ))
    }

    /// A float tensor of shape `dims` from little-endian `bytes` of type `dtype` (a weight fed as
    /// an input, or a hidden state read back from disk).
    pub fn from_le_bytes(dtype: WeightDtype, dims: &[usize], bytes: &[u8]) -> Result<Self> {
        let shape = IxDyn(dims);
        let bad = |e: ndarray::ShapeError| Error::internal(e.to_string());
        match dtype {
            WeightDtype::Float32 => {
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Self::from_array(ArrayD::from_shape_vec(shape, v).map_err(bad)?)
            }
            WeightDtype::Float16 => {
                let v: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                    .collect();
                Self::from_array(ArrayD::from_shape_vec(shape, v).map_err(bad)?)
            }
            WeightDtype::Bfloat16 => {
                let v: Vec<half::bf16> = bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                    .collect();
                Self::from_array(ArrayD::from_shape_vec(shape, v).map_err(bad)?)
            }
        }
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        match self.0.dtype() {
            ValueType::Tensor { shape, .. } => shape.iter().map(|&d| d.max(0) as usize).collect(),
            _ => Vec::new(),
        }
    }

    /// The values of a float tensor as float32, row-major: borrowed from a float32 tensor,
    /// converted from a float16 or bfloat16 one (the activations and logits of an fp16 export).
    pub fn to_f32(&self) -> Result<Cow<'_, [f32]>> {
        match self.0.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            } => Ok(Cow::Owned(
                self.values::<half::f16>("float16")?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            )),
            ValueType::Tensor {
                ty: TensorElementType::Bfloat16,
                ..
            } => Ok(Cow::Owned(
                self.values::<half::bf16>("bfloat16")?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            )),
            _ => self.values("float32").map(Cow::Borrowed),
        }
    }

    /// The values of a float64 tensor, row-major.
    pub fn as_f64(&self) -> Result<&[f64]> {
        self.values("float64")
    }

    /// The values of an int64 tensor, row-major.
    pub fn as_i64(&self) -> Result<&[i64]> {
        self.values("int64")
    }

    fn values<T: PrimitiveTensorElementType>(&self, type_name: &str) -> Result<&[T]> {
        self.0
            .try_extract_tensor::<T>()
            .map(|(_, data)| data)
            .map_err(|e| Error::Runtime(format!("expected a {type_name} tensor: {e}")))
    }

    /// Its ONNX type as the input `name` of a model: element type and rank, every dimension
    /// symbolic and named after the input, so that ONNX Runtime never takes two inputs' dims
    /// for one size (it plans buffers as if equal names were equal sizes).
    pub fn onnx_type(&self, name: &str) -> Result<TypeProto> {
        let ValueType::Tensor { ty, shape, .. } = self.0.dtype() else {
            return Err(Error::internal("a stage passed on a non-tensor value"));
        };
        Ok(symbolic_type(onnx_element_type(*ty)?, shape.len(), name))
    }

    /// The element type and byte length of a float32, float16 or bfloat16 tensor; `None` for
    /// any other tensor.
    pub fn float_size(&self) -> Option<(WeightDtype, usize)> {
        let ValueType::Tensor { ty, shape, .. } = self.0.dtype() else {
            return None;
        };
        let dtype = match ty {
            TensorElementType::Float32 => WeightDtype::Float32,
            TensorElementType::Float16 => WeightDtype::Float16,
            TensorElementType::Bfloat16 => WeightDtype::Bfloat16,
            _ => return None,
        };
        let numel: usize = shape.iter().map(|&d| d.max(0) as usize).product();
        Some((dtype, numel * dtype.size()))
    }

    /// A float tensor's values as little-endian bytes of its own element type (the inverse of
    /// [`Activation::from_le_bytes`]); `None` for any other tensor.
    pub fn float_le_bytes(&self) -> Result<Option<(WeightDtype, Vec<u8>)>> {
        let Some((dtype, len)) = self.float_size() else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(len);
        match dtype {
            WeightDtype::Float32 => self
                .values::<f32>("float32")?
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            WeightDtype::Float16 => self
                .values::<half::f16>("float16")?
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_bits().to_le_bytes())),
            WeightDtype::Bfloat16 => self
                .values::<half::bf16>("bfloat16")?
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_bits().to_le_bytes())),
        }
        Ok(Some((dtype, bytes)))
    }

    /// Borrowed as a session input.
    pub(crate) fn input(&self) -> SessionInputValue<'_> {
        SessionInputValue::from(&self.0)
    }
}

/// The ONNX type of a model input `name` with element type `elem_type` (`TensorProto.DataType`)
/// and rank `rank`, every dimension symbolic and named after the input ([`Activation::onnx_type`]).
pub fn symbolic_type(elem_type: i32, rank: usize, name: &str) -> TypeProto {
    let dims = (0..rank)
        .map(|i| Dimension {
            value: Some(dimension::Value::DimParam(format!("{name}::d{i}"))),
            ..Default::default()
        })
        .collect();
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(elem_type),
            shape: Some(TensorShapeProto { dim: dims }),
        })),
        ..Default::default()
    }
}

/// The ONNX `TensorProto.DataType` of an ONNX Runtime element type.
fn onnx_element_type(ty: TensorElementType) -> Result<i32> {
    use TensorElementType as T;
    Ok(match ty {
        T::Float32 => 1,
        T::Uint8 => 2,
        T::Int8 => 3,
        T::Uint16 => 4,
        T::Int16 => 5,
        T::Int32 => 6,
        T::Int64 => 7,
        T::String => 8,
        T::Bool => 9,
        T::Float16 => 10,
        T::Float64 => 11,
        T::Uint32 => 12,
        T::Uint64 => 13,
        T::Bfloat16 => 16,
        other => {
            return Err(Error::Runtime(format!(
                "unsupported element type {other:?} between stages"
            )))
        }
    })
}

/// A session run with named inputs and selected outputs.
pub struct ModelSession {
    session: Session,
    /// Inputs it feeds itself at every run ([`ModelSession::feeding`]).
    own_inputs: Vec<(String, Activation)>,
}

impl ModelSession {
    /// Opens a model built in memory (a stage of a partition); `label` names it in errors.
    pub fn open(runtime: &Runtime, model: &ModelProto, label: &str) -> Result<Self> {
        let bytes = model.encode_to_vec();
        let session = runtime.session_from_memory(&bytes, Path::new(label))?;
        Ok(Self {
            session,
            own_inputs: Vec::new(),
        })
    }

    /// Feeds `inputs` (name, value) at every run besides the caller's: a stage's large
    /// initializers, held once here rather than copied into ONNX Runtime's session.
    pub fn feeding(mut self, inputs: Vec<(String, Activation)>) -> Self {
        self.own_inputs = inputs;
        self
    }

    /// Opens the model file at `path` (its external data next to it).
    pub fn open_file(runtime: &Runtime, path: &Path) -> Result<Self> {
        Ok(Self {
            session: runtime.session(path)?,
            own_inputs: Vec::new(),
        })
    }

    /// Runs with `inputs` and returns `outputs`, in that order.
    pub fn run(
        &mut self,
        inputs: &[(&str, &Activation)],
        outputs: &[String],
    ) -> Result<Vec<Activation>> {
        let own = self.own_inputs.iter().map(|(n, v)| (n.as_str(), v));
        let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs
            .iter()
            .map(|(name, value)| (*name, *value))
            .chain(own)
            .map(|(name, value)| (Cow::Borrowed(name), value.input()))
            .collect();
        let mut selector = ort::session::OutputSelector::no_default();
        for o in outputs {
            selector = selector.with(o);
        }
        let options = RunOptions::new()
            .map_err(runtime_err)?
            .with_outputs(selector);
        let mut results = self
            .session
            .run_with_options(values, &options)
            .map_err(runtime_err)?;
        outputs
            .iter()
            .map(|o| {
                results
                    .remove(o.as_str())
                    .map(Activation)
                    .ok_or_else(|| Error::internal(format!("a run produced no '{o}'")))
            })
            .collect()
    }
}
