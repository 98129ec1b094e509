//! What a job writes besides the pass itself: the pruned matrices with their sparsity and zstd
//! sizes ([`PrunedWeights`]), then the model, its companions and its reports, every file
//! committed as an output of the job ([`crate::atomic::Job`]), and the digests of what was read
//! and written.

use crate::atomic::Job;
use crate::error::{Error, Result};
use crate::graph::{Linear, LinearNode};
use crate::onnx::{Companion, ModelWriter, NodeAt, OnnxModel, SavedModel};
use crate::progress::Progress;
use crate::prune::permute_columns;
use crate::report::{
    file_digests, html_report_path, report_path, CompressedSizes, FileDigest, MatrixSparsity,
};
use std::collections::BTreeMap;
use std::path::Path;

/// What pruning did to every matrix: its sparsity and, for the matrices written, how well the
/// dense and the pruned bytes compress.
#[derive(Default)]
pub(crate) struct PrunedWeights {
    /// Each matrix's sparsity, in discovery order.
    pub(super) per_matrix: Vec<MatrixSparsity>,
    /// Each written matrix's stored and compressed sizes.
    pub(super) compressed: Vec<CompressedSizes>,
    /// Seconds spent writing matrices and compressing them.
    pub(super) write_seconds: f64,
}

impl PrunedWeights {
    /// Records the sparsity of a pruned matrix (`[out, in]` values).
    pub(crate) fn record(&mut self, linear: &Linear, weights: &[f32], target: f64) {
        let zeros = weights.iter().filter(|w| **w == 0.0).count();
        self.per_matrix.push(MatrixSparsity {
            block: linear.block,
            module: linear.module.clone(),
            weight: linear.weight.name.clone(),
            shape: [linear.out_features, linear.in_features],
            target,
            measured: zeros as f64 / linear.numel() as f64,
            input_order: None,
        });
    }

    /// How many matrices are stored with their inputs reordered.
    pub(crate) fn reordered(&self) -> usize {
        self.per_matrix
            .iter()
            .filter(|m| m.input_order.is_some())
            .count()
    }

    /// Hands a matrix's new stored bytes to `output` (`None`: unchanged, nothing to write) and
    /// measures how its dense and pruned bytes compress, for the report's deployment section.
    pub(crate) fn write(
        &mut self,
        model: &OnnxModel,
        linear: &Linear,
        bytes: Option<&[u8]>,
        output: &mut ModelWriter<'_>,
    ) -> Result<()> {
        let clock = std::time::Instant::now();
        let tensor = model
            .initializer(&linear.weight)
            .ok_or_else(|| Error::tensor(&linear.weight.name, "is no longer in the model"))?;
        let dense = model.tensor_bytes(&linear.weight.graph, tensor)?;
        self.compressed.push(CompressedSizes::measure(
            &linear.weight.name,
            &dense,
            bytes,
        )?);
        if let Some(bytes) = bytes {
            output.put(&linear.weight, bytes)?;
        }
        self.write_seconds += clock.elapsed().as_secs_f64();
        Ok(())
    }

    /// Hands a pruned matrix to `output`: `weights` (`[out, in]`, the stored input order) encoded
    /// as `bytes`, or, when its N:M groups follow the input channel order `order`, stored with its
    /// inputs in that order and its nodes reading their input reordered to match
    /// (docs/onnx-layouts.md, "Input permutations").
    pub(crate) fn write_pruned(
        &mut self,
        model: &OnnxModel,
        linear: &Linear,
        (weights, bytes): (&[f32], &[u8]),
        order: Option<&[u32]>,
        output: &mut ModelWriter<'_>,
    ) -> Result<()> {
        let Some(order) = order else {
            return self.write(model, linear, Some(bytes), output);
        };
        let reordered = permute_columns(weights, linear.out_features, linear.in_features, order);
        self.write(
            model,
            linear,
            Some(&linear.encode_out_in(&reordered)),
            output,
        )?;
        let nodes: Vec<NodeAt> = linear.nodes.iter().map(LinearNode::at).collect();
        let order_name = output.reorder_input(&linear.weight, &nodes, order)?;
        let matrix = self
            .per_matrix
            .iter_mut()
            .rev()
            .find(|m| m.weight == linear.weight.name)
            .ok_or_else(|| Error::internal("a matrix written before its sparsity was recorded"))?;
        matrix.input_order = Some(order_name);
        Ok(())
    }
}

/// Renames the model and its data file into place, writes the companions, and removes the
/// reports of an earlier run at the same path, which describe a model that is gone.
pub(super) fn write_model(
    output: ModelWriter<'_>,
    companions: &[Companion],
    job: &Job,
    progress: &Progress,
    timings: &mut BTreeMap<String, f64>,
) -> Result<SavedModel> {
    let stage = progress.stage("write");
    let saved = output.finish()?;
    timings.insert("write".to_string(), stage.finish());
    for companion in companions {
        companion.write(job)?;
    }
    for stale in [
        report_path(&saved.model_path),
        html_report_path(&saved.model_path),
    ] {
        remove_if_present(&stale)?;
    }
    Ok(saved)
}

/// The digests of the input's files and of every file written.
pub(super) fn digests(
    model: &OnnxModel,
    saved: &SavedModel,
    companions: &[Companion],
) -> Result<(Vec<FileDigest>, Vec<FileDigest>)> {
    let mut written = vec![saved.model_path.clone()];
    written.extend(saved.data_path.clone());
    written.extend(companions.iter().map(|c| c.target.clone()));
    Ok((file_digests(&model.input_files())?, file_digests(&written)?))
}

/// Removes a file left by an earlier run, if there is one.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
