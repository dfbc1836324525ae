//! `POST /v1/sql`: statements over the server's engine, the last one's rows as JSON or an
//! Arrow IPC stream; errors carry their SQLSTATE.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::reply::*;
use super::AppState;
use crate::serve::api::*;

/// `POST /v1/sql`: `{"sql": "...", "format": "json" | "arrow"}` → the last statement's rows
/// as JSON objects (`columns`, `rows`) or an Arrow IPC stream.
pub(super) async fn sql(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<SqlRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Response, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let arrow_format = match req.format.as_deref() {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "format",
                format!("format must be json or arrow, not {other}"),
            ))
        }
    };
    let sql_error = |e: crate::error::Error| {
        let code = crate::serve::sqlstate::of_error(&e);
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{} (SQLSTATE {code})", e.user_message()),
            param: Some("sql"),
        }
    };
    let statements = crate::Engine::parse(&req.sql).map_err(sql_error)?;
    if statements.is_empty() {
        return Err(ApiError::bad("sql", "no statement"));
    }
    let mut last = None;
    for statement in statements {
        let r = state.engine.execute(statement).await.map_err(sql_error)?;
        last = Some((r.schema, r.batches));
    }
    let Some((schema, batches)) = last else {
        return Err(ApiError::bad("sql", "no statement"));
    };
    if arrow_format {
        let buf = crate::output::arrow_ipc_stream(&schema, &batches).map_err(sql_error)?;
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            buf,
        )
            .into_response());
    }
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b).map_err(|e| sql_error(e.into()))?;
    }
    w.finish().map_err(|e| sql_error(e.into()))?;
    let bytes = w.into_inner();
    let rows: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("sql", e.to_string()))?
    };
    let columns: Vec<SqlColumn> = schema
        .fields()
        .iter()
        .map(|f| SqlColumn {
            name: f.name().clone(),
            r#type: f.data_type().to_string(),
        })
        .collect();
    let row_count = batches.iter().map(|b| b.num_rows()).sum();
    Ok(Json(SqlResponse {
        columns,
        rows,
        row_count,
    })
    .into_response())
}
