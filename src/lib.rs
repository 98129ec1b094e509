//! `neuroal-onnx`: one-shot pruning of exported decoder-only LLMs in ONNX.
//!
//! The pipeline runs one way, one module per stage: [`onnx`] loads the model, [`graph`] finds the
//! prunable linears, [`calib`] turns text into token windows, [`prune`] scores and masks weights,
//! [`allocate`] decides each matrix's sparsity, [`runtime`] runs ONNX Runtime, [`eval`] measures the
//! result and [`report`] holds and writes it down. [`pipeline`] ties the stages together for the
//! CLI. Beneath them, [`error`], [`progress`], [`device`] (where the work runs) and [`atomic`]
//! (files written whole, and the files a job owns) know nothing of models.
//!
//! Each module imports only modules of lower layers; docs/architecture.md gives the layers and
//! the module graph, which `scripts/module-graph.sh --check` keeps in step with the code.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod allocate;
pub mod atomic;
pub mod calib;
pub mod device;
pub mod error;
pub mod eval;
pub mod graph;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod report;
pub mod runtime;

pub use error::{Error, Result};
