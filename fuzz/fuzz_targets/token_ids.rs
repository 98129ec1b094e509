//! Fuzzes `calib::read_token_ids`, the reader of `--calib` files of token ids (`.json`: an array
//! of ids, or an array of such arrays). Input: the file's bytes.
//!
//! `--calib-windows` files are read by `Calibration::read_windows`, which is private to the
//! pipeline and not reachable from here; its JSON goes through the same `serde_json::Value` parse.
//!
//! Nothing may panic: every malformed file must come back as an `Err`.

#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use neuroal_onnx::calib::read_token_ids;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("calib.json", data);
    if let Ok(documents) = read_token_ids(&path) {
        assert!(!documents.is_empty(), "a file read as no document at all");
    }
});
