//! The library's error type. Every failure a user can cause names what they must change.

use std::path::PathBuf;

/// Errors raised by semflow's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Models and inference: loading, tokenizing, length limits, backends (the inference
    /// crate's errors; its argument, I/O and JSON errors become this type's own variants).
    #[error(transparent)]
    Inference(semflow_inference::Error),

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
}

pub use semflow_inference::error::with_causes;

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

impl From<semflow_inference::Error> for Error {
    /// The inference crate's argument, I/O and JSON errors are the engine's own kinds (front
    /// ends map them to codes by kind); the rest stay inference errors.
    fn from(e: semflow_inference::Error) -> Self {
        use semflow_inference::Error as I;
        match e {
            I::InvalidArgument(message) => Error::InvalidArgument(message),
            I::Io { path, source } => Error::Io { path, source },
            I::Json { path, source } => Error::Json { path, source },
            other => Error::Inference(other),
        }
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(inner) => inner,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}
