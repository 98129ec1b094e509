//! Element types of prunable weights and their conversion to and from the fp32 the maths runs in.

use super::proto::tensor_proto::DataType;
use half::{bf16, f16};
use rayon::prelude::*;
use serde::Serialize;

/// The floating-point element types a prunable weight may be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// IEEE 754 single precision (`FLOAT`, 1).
    Float32,
    /// IEEE 754 half precision (`FLOAT16`, 10).
    Float16,
    /// bfloat16 (`BFLOAT16`, 16).
    Bfloat16,
}

impl WeightDtype {
    /// The weight type of an ONNX `TensorProto.data_type`, if it is one we prune.
    pub fn from_onnx(data_type: i32) -> Option<Self> {
        match DataType::try_from(data_type).ok()? {
            DataType::Float => Some(Self::Float32),
            DataType::Float16 => Some(Self::Float16),
            DataType::Bfloat16 => Some(Self::Bfloat16),
            _ => None,
        }
    }

    /// Its ONNX `TensorProto.data_type`.
    pub fn onnx(self) -> i32 {
        match self {
            Self::Float32 => DataType::Float as i32,
            Self::Float16 => DataType::Float16 as i32,
            Self::Bfloat16 => DataType::Bfloat16 as i32,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Float16 | Self::Bfloat16 => 2,
        }
    }

    /// Decodes little-endian `bytes` into `out` (`out.len() * size() == bytes.len()`), in
    /// parallel chunks.
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        let size = self.size();
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * size))
            .for_each(|(out, bytes)| {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                    *o = self.decode_one(b);
                }
            });
    }

    /// Encodes `values` as little-endian bytes of this type (round to nearest even), in parallel
    /// chunks.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let size = self.size();
        let mut out = vec![0u8; values.len() * size];
        out.par_chunks_mut(CHUNK * size)
            .zip(values.par_chunks(CHUNK))
            .for_each(|(out, values)| {
                for (b, &v) in out.chunks_exact_mut(size).zip(values) {
                    self.encode_one(v, b);
                }
            });
        out
    }

    fn decode_one(self, b: &[u8]) -> f32 {
        match self {
            Self::Float32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::Float16 => f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            Self::Bfloat16 => bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        }
    }

    fn encode_one(self, v: f32, out: &mut [u8]) {
        match self {
            Self::Float32 => out.copy_from_slice(&v.to_le_bytes()),
            Self::Float16 => out.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
            Self::Bfloat16 => out.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
        }
    }
}

/// Elements per parallel task of [`WeightDtype::decode`] and [`WeightDtype::encode`].
const CHUNK: usize = 1 << 16;

/// The ONNX name of a `data_type` value (`"DOUBLE"`, `"INT8"`, ...), for messages.
pub fn data_type_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("unknown data type {data_type}"))
}

/// Bytes per element of a fixed-size ONNX data type, `None` for strings, sub-byte and unknown types.
pub(crate) fn element_size(data_type: i32) -> Option<usize> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Uint64 | Double | Complex64 => 8,
        Complex128 => 16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_round_trip_exactly() {
        let values = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 6.1035156e-5];
        for dtype in [WeightDtype::Float16, WeightDtype::Float32] {
            let bytes = dtype.encode(&values);
            let mut back = vec![0.0; values.len()];
            dtype.decode(&bytes, &mut back);
            assert_eq!(back, values, "{dtype:?}");
        }
        let bf = [1.0f32, -3.0, 0.5, 2f32.powi(100)];
        let bytes = WeightDtype::Bfloat16.encode(&bf);
        let mut back = vec![0.0; bf.len()];
        WeightDtype::Bfloat16.decode(&bytes, &mut back);
        assert_eq!(back, bf);
    }

    #[test]
    fn known_bit_patterns() {
        // 1.0 in fp16 is 0x3C00 and in bf16 0x3F80, both little-endian.
        assert_eq!(WeightDtype::Float16.encode(&[1.0]), vec![0x00, 0x3C]);
        assert_eq!(WeightDtype::Bfloat16.encode(&[1.0]), vec![0x80, 0x3F]);
        assert_eq!(WeightDtype::from_onnx(10), Some(WeightDtype::Float16));
        assert_eq!(WeightDtype::from_onnx(11), None);
        assert_eq!(data_type_name(11), "DOUBLE");
    }
}
