//! Integration tests of `neuroal-onnx`: the real binary and the library on generated fixtures
//! (`make setup` makes them in .cache/fixtures).

mod allocations;
mod bad_input;
mod calibrated;
mod cli;
mod discovery;
mod harness;
mod onnx_io;
mod runtime;
mod smollm2;
mod stages;
