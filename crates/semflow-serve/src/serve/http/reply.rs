//! What every handler shares: errors in OpenAI's shape (status, message, the parameter at
//! fault), the request limits (items, tokens per item and per request) and the call options
//! they imply, and the batch metrics.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::HttpOptions;
use crate::error::Error;
use crate::inference::tokenize::Truncation;
use crate::inference::CallOptions;
use crate::serve::api::*;

/// An API error in OpenAI's shape.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) param: Option<&'static str>,
}

impl ApiError {
    pub(super) fn bad(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use semflow_inference::Error as Inference;
        let status = match &e {
            Error::InvalidArgument(_)
            | Error::Inference(Inference::TooLong { .. } | Inference::Tokenizer(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.user_message(),
            param: None,
        }
    }
}

impl From<semflow_inference::Error> for ApiError {
    fn from(e: semflow_inference::Error) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind,
                param: self.param,
                code: None,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Items and tokens per request, for batch-size histograms and tokens/s (`rate()`).
pub(super) fn record_batch(route: &'static str, items: usize, tokens: usize) {
    metrics::histogram!("semflow_http_batch_items", "route" => route).record(items as f64);
    metrics::counter!("semflow_http_tokens_total", "route" => route).increment(tokens as u64);
}

pub(super) const OPTIONS: CallOptions = CallOptions {
    truncation: Truncation::End,
    use_cache: true,
};

/// Inference options for a request: with a per-item token limit, long items are refused
/// (413 before inference) rather than truncated.
pub(super) fn call_options(options: &HttpOptions) -> CallOptions {
    CallOptions {
        truncation: if options.max_item_tokens.is_some() {
            Truncation::Error
        } else {
            Truncation::End
        },
        ..OPTIONS
    }
}

/// Per-item and per-request token limits (413 naming the item).
pub(super) fn check_tokens(
    lengths: &[usize],
    options: &HttpOptions,
    param: &'static str,
) -> std::result::Result<(), ApiError> {
    let too_large = |message: String| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message,
        param: Some(param),
    };
    if let Some(max) = options.max_item_tokens {
        if let Some((i, n)) = lengths.iter().enumerate().find(|(_, n)| **n > max) {
            return Err(too_large(format!(
                "{param}[{i}] has {n} tokens; the limit per item is {max}"
            )));
        }
    }
    if let Some(max) = options.max_request_tokens {
        let total: usize = lengths.iter().sum();
        if total > max {
            return Err(too_large(format!(
                "the request has {total} tokens; the limit per request is {max}"
            )));
        }
    }
    Ok(())
}

pub(super) fn too_many(
    n: usize,
    max: usize,
    param: &'static str,
) -> std::result::Result<(), ApiError> {
    if n > max {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("{n} {param} in one request; the limit is {max}"),
            param: Some(param),
        });
    }
    Ok(())
}

pub(super) fn rejection(r: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError {
        status: r.status(),
        message: r.body_text(),
        param: None,
    }
}
