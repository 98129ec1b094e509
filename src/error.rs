//! The library's error type: every variant names the file, tensor, node or flag it is about and,
//! where there is one, what the user can do about it.

use std::path::PathBuf;

/// Everything that can go wrong in `neuroal-onnx`. Field names say what they hold.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is not a decodable ONNX `ModelProto`.
    #[error("{}: not a valid ONNX model ({reason}); is the file complete and really an .onnx file?", path.display())]
    NotOnnx { path: PathBuf, reason: String },

    /// A tensor's data cannot be read or does not match its declared type and shape.
    #[error("tensor '{tensor}': {message}")]
    Tensor { tensor: String, message: String },

    /// A tensor's external data reference is unsafe or does not match the data file.
    #[error("tensor '{tensor}': external data {}: {message}", location.display())]
    ExternalData {
        tensor: String,
        location: PathBuf,
        message: String,
    },

    /// The graph is not shaped the way an exported decoder-only LLM is.
    #[error("{}: {message}", path.display())]
    Graph { path: PathBuf, message: String },

    /// A command-line value or combination is invalid.
    #[error("invalid {flag}: {message}")]
    InvalidArgument { flag: String, message: String },

    /// A method or option that this version does not build yet.
    #[error("{what} is not implemented yet; {hint}")]
    NotImplemented { what: String, hint: String },

    /// ONNX Runtime could not be loaded, or a session failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    /// The model is valid but has a property this tool cannot work with; `hint` says what to do
    /// instead (a flag, another export).
    #[error("{}: {what}; {hint}", path.display())]
    Unsupported {
        path: PathBuf,
        what: String,
        hint: String,
    },

    /// A broken invariant of the tool itself, not of the input.
    #[error("internal error: {0}; please report it")]
    Internal(String),

    /// The tokenizer could not be loaded or does not fit the text or the model.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A problem with tensor `tensor`.
    pub fn tensor(tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    /// A graph-level problem in the model at `path`.
    pub fn graph(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Graph {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An invalid value of a command-line flag.
    pub fn invalid(flag: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            flag: flag.into(),
            message: message.into(),
        }
    }

    /// A property of the model at `path` that this tool cannot work with, and what to do instead.
    pub fn unsupported(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            path: path.into(),
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// The model at `path` gave logits that are NaN or infinite at `place` (a window and position,
    /// a question and choice): a property of the model on that input, reported as
    /// [`Error::Unsupported`] with `hint`, never scored or sampled as if it were a distribution.
    pub fn non_finite_logits(path: impl Into<PathBuf>, place: &str, hint: &str) -> Self {
        Error::unsupported(
            path,
            format!("{place}: the model's logits are NaN or infinite"),
            hint,
        )
    }

    /// A broken invariant of the tool itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// A feature that is accepted by the command line but not built yet.
    pub fn not_implemented(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::NotImplemented {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// Whether the error comes from the user's arguments (exit code 2) rather than from the work.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument { .. } | Error::NotImplemented { .. }
        )
    }
}
