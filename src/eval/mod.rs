//! Measuring a model: perplexity on held-out text.

mod perplexity;

pub use perplexity::{perplexity, window_nll, Perplexity};
