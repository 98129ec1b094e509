//! The canonical `[out, in]` view of a linear's weight: read from whatever layout and type it is
//! stored in, and written back the same way.

use super::discover::{Layout, Linear};
use crate::error::{Error, Result};
use crate::onnx::OnnxModel;
use rayon::prelude::*;

impl Linear {
    /// The weight as row-major `[out_features, in_features]` fp32. A weight holding NaN or ±Inf
    /// is refused, with the count of such values.
    pub fn read_out_in(&self, model: &OnnxModel) -> Result<Vec<f32>> {
        let tensor = model
            .initializer(&self.weight)
            .ok_or_else(|| Error::tensor(&self.weight.name, "is no longer in the model"))?;
        let bytes = model.tensor_bytes(&self.weight.graph, tensor)?;
        let n = self.numel();
        if bytes.len() != n * self.dtype.size() {
            return Err(Error::tensor(
                &self.weight.name,
                format!(
                    "holds {} bytes, expected {} for [{}, {}] {:?}",
                    bytes.len(),
                    n * self.dtype.size(),
                    self.out_features,
                    self.in_features,
                    self.dtype
                ),
            ));
        }
        let mut stored = vec![0.0f32; n];
        self.dtype.decode(&bytes, &mut stored);
        // Scores, masks and the allocation searches are meaningless on NaN or infinite weights.
        let non_finite = stored.par_iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            return Err(Error::tensor(
                &self.weight.name,
                format!(
                    "holds {non_finite} non-finite value(s) (NaN or ±Inf) among its {n} weights; pruning scores mean nothing on them: repair the model before pruning it"
                ),
            ));
        }
        Ok(match self.layout {
            Layout::OutIn => stored,
            Layout::InOut => transpose(&stored, self.in_features, self.out_features),
        })
    }

    /// Encodes a row-major `[out_features, in_features]` matrix in the weight's stored layout and
    /// type, ready to replace the initializer's bytes.
    pub fn encode_out_in(&self, out_in: &[f32]) -> Vec<u8> {
        assert_eq!(out_in.len(), self.numel(), "matrix size");
        match self.layout {
            Layout::OutIn => self.dtype.encode(out_in),
            Layout::InOut => {
                self.dtype
                    .encode(&transpose(out_in, self.out_features, self.in_features))
            }
        }
    }
}

/// Transposes a row-major `[rows, cols]` matrix, in square tiles so that both the reads and the
/// writes stay within a few cache lines (an element-by-element walk misses the cache on every write
/// of a large matrix), one band of `TILE` output rows per task.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut t = vec![0.0f32; m.len()];
    if rows == 0 {
        return t;
    }
    t.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * TILE;
            let width = out.len() / rows; // TILE, or what is left in the last band
            for r0 in (0..rows).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let row = &m[r * cols + c0..r * cols + c0 + width];
                    for (c, &v) in row.iter().enumerate() {
                        out[c * rows + r] = v;
                    }
                }
            }
        });
    t
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_moves_rows_to_columns() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [[1,2,3],[4,5,6]]
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(transpose(&transpose(&m, 2, 3), 3, 2), m.to_vec());
        // Sizes that are not multiples of the tile, larger than one tile.
        let (rows, cols) = (45, 70);
        let big: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&big, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], big[r * cols + c], "({r}, {c})");
            }
        }
    }
}
