//! Integration tests of `neuroal-onnx`: the real binary and the library on generated fixtures
//! (`make setup` makes them in .cache/fixtures).

mod allocations;
mod architecture;
mod bad_input;
mod big_model;
mod calibrated;
mod cli;
mod discovery;
mod evaluation;
mod exports;
mod fuzz_regressions;
mod gemma3;
mod gpu_check;
mod harness;
mod headline;
mod hostile;
mod kernels;
mod onnx_io;
mod ort_versions;
mod properties;
mod report_html;
mod report_schema;
mod runtime;
mod smollm2;
mod stages;
