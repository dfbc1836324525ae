//! The inference crate's error type. Every failure a user can cause names what they must
//! change.

use std::path::PathBuf;

/// Errors raised by model loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model could not be found, read or loaded.
    #[error("model {model}: {message}")]
    Model { model: String, message: String },

    /// The Hugging Face hub could not be reached to fetch a model.
    #[error("could not download {model} from the Hugging Face hub at {endpoint} ({message}); download it elsewhere and pass its local directory with {flag} (or set {env}), or set HF_HUB_OFFLINE=1 to use a copy already in the cache")]
    HubUnreachable {
        model: String,
        endpoint: String,
        message: String,
        flag: &'static str,
        env: &'static str,
    },

    /// The hub refused access: a gated or private repository.
    #[error("the Hugging Face hub at {endpoint} refused access to {model} (HTTP {status}): the repository is gated or private; accept its terms on the hub and set HF_TOKEN to a token that has access, or pass a local directory with {flag}")]
    HubAccess {
        model: String,
        endpoint: String,
        status: u16,
        flag: &'static str,
    },

    /// `HF_HUB_OFFLINE` is set and the cache lacks a file.
    #[error("{model}: {file} is not in the Hugging Face cache at {cache}, and HF_HUB_OFFLINE forbids downloading it; run once online (or unset HF_HUB_OFFLINE)")]
    HubOffline {
        model: String,
        file: String,
        cache: String,
    },

    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An input is longer than the model accepts and truncation is off.
    #[error("{function}: input of {tokens} tokens exceeds the model's maximum of {max} (row {row}); shorten it or SET semflow.truncate = 'end'")]
    TooLong {
        function: &'static str,
        tokens: usize,
        max: usize,
        row: usize,
    },

    /// Inference itself failed (backend error, device error).
    #[error("inference: {0}")]
    Inference(String),

    /// A user-supplied option or argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),

    /// File I/O with the path involved.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// JSON (config files) that could not be parsed.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A safetensors file that could not be read or written.
    #[error("safetensors: {0}")]
    Safetensors(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A model error with a message.
    pub fn model(model: impl ToString, message: impl ToString) -> Self {
        Error::Model {
            model: model.to_string(),
            message: message.to_string(),
        }
    }
}

/// `e` and its causes, "outer: inner: root" (transport errors such as reqwest's say only
/// "error sending request" at the top; the reason, e.g. an unknown certificate, is below).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
