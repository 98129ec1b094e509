//! Fuzzes what neuroal-onnx does with an untrusted model before any ONNX Runtime call: the
//! loader (`OnnxModel::load`, with the external-data resolver), discovery of the prunable
//! linears, the partition into stages, and the reads of every discovered weight.
//!
//! Input: either a bare `model.onnx`, or `NXFZ`, a little-endian u32 `n`, `n` bytes of
//! `model.onnx` and the rest as `model.onnx_data` (so external offsets, lengths and locations
//! meet a real data file). `tests/it/fuzz_regressions.rs` reads its files the same way.
//!
//! Nothing may panic, hang or allocate more than libFuzzer's limits: every malformed input
//! must come back as an `Err`.

#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use neuroal_onnx::graph::{discover, Partition};
use neuroal_onnx::onnx::OnnxModel;

/// `NXFZ` + u32 LE model length: the model, then its external data file.
fn split(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.strip_prefix(b"NXFZ") {
        Some(rest) if rest.len() >= 4 => {
            let (len, rest) = rest.split_at(4);
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (model, ext) = rest.split_at(len.min(rest.len()));
            (model, Some(ext))
        }
        _ => (data, None),
    }
}

fuzz_target!(|data: &[u8]| {
    let (model_bytes, ext) = split(data);
    let model_path = scratch::write("model.onnx", model_bytes);
    match ext {
        Some(ext) => {
            scratch::write("model.onnx_data", ext);
        }
        None => {
            let _ = std::fs::remove_file(scratch::folder().join("model.onnx_data"));
        }
    }

    let Ok(model) = OnnxModel::load(&model_path) else {
        return;
    };
    let Ok(discovery) = discover(&model) else {
        return;
    };
    for linear in &discovery.linears {
        let _ = linear.read_out_in(&model);
    }
    let Ok(partition) = Partition::new(&model, &discovery) else {
        return;
    };
    for stage in partition.blocks() {
        let neuroal_onnx::graph::StageKind::Block(b) = stage.kind else {
            continue;
        };
        let linears: Vec<_> = discovery.block(b).collect();
        let _ = partition.producers(stage, &linears);
    }
});
