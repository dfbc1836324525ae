//! The library's error type. Every failure a user can cause names what they must change.

use std::path::PathBuf;

/// Errors raised by semflow's library code.
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

    /// The Lance index could not be read or written.
    #[error("index: {0}")]
    Index(String),

    /// Another writer committed to the index between this change's read and its commit in a
    /// way Lance cannot rebase over; rebuilding the change on the newer version may succeed.
    #[error("index {uri}: concurrent commit: {message}")]
    IndexConflict { uri: String, message: String },

    /// A stream commit was refused because the index no longer stands where its batch
    /// started: another worker took the partition over (zombie-writer fencing).
    #[error("index: batch fenced: {topic}/{partition} stands at {} in the index (version {version}), not at {} where this batch started; another worker has taken the partition over", position(*.found), position(*.expected))]
    Fenced {
        topic: String,
        partition: i32,
        expected: Option<i64>,
        found: Option<i64>,
        version: u64,
    },

    /// Kafka: client configuration, broker or delivery errors.
    #[error("kafka: {0}")]
    Kafka(String),

    /// A continuous pipeline could not be set up or run.
    #[error("pipeline: {0}")]
    Pipeline(String),

    /// An error from DataFusion.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// An error from Arrow.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The message to show a user: DataFusion's "External error: " wrapping of semflow's own
    /// errors is removed, so the text starts with what went wrong.
    pub fn user_message(&self) -> String {
        match self {
            Error::DataFusion(e) => datafusion_message(e),
            other => other.to_string(),
        }
    }

    /// A bad argument to a SQL function, in the form DataFusion carries it: typed, so the
    /// front ends map it to SQLSTATE 22023 without reading its text, and shown to users
    /// without DataFusion's prefix ([`Error::user_message`]).
    pub fn sql_argument(message: String) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(Error::InvalidArgument(message)))
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

/// A stored stream position for messages: an offset, or "no position" before the first.
fn position(offset: Option<i64>) -> String {
    offset.map_or_else(|| "no position".to_string(), |o| format!("offset {o}"))
}

/// [`Error::user_message`] of a DataFusion error.
pub fn datafusion_message(e: &datafusion::error::DataFusionError) -> String {
    use datafusion::error::DataFusionError as D;
    match e {
        D::External(inner) => match inner.downcast_ref::<Error>() {
            Some(own) => own.user_message(),
            None => inner.to_string(),
        },
        D::Context(ctx, inner) => format!("{ctx}: {}", datafusion_message(inner)),
        D::Shared(inner) => datafusion_message(inner),
        other => other.to_string(),
    }
}

/// `Err(Error::sql_argument(format!(…)))`: a bad argument to a semflow SQL function.
macro_rules! arg_err {
    ($($arg:tt)*) => {
        Err($crate::error::Error::sql_argument(format!($($arg)*)))
    };
}
pub(crate) use arg_err;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(inner) => inner,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}
