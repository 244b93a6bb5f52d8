//! The API's error: `{"error": "…"}` with the status that fits.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::DbError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
    /// Any other status (405, 413, 415…).
    #[error("{1}")]
    Status(StatusCode, String),
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::UnknownAccount(_) | DbError::UnknownKey(_) => {
                ApiError::NotFound(error.to_string())
            }
            other => {
                tracing::error!(error = %other, "API request failed");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

/// A `/v1` error claudeflare answers itself: Anthropic's envelope, as the SDKs expect, with a
/// message that starts with `claudeflare: `.
pub fn envelope(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = claudeflare_tower::claudeflare_envelope(kind, message);
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Status(status, _) => *status,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}
