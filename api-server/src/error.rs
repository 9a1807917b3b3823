//! Ironic's error body: `{"error_message": "<JSON text>"}` with the right
//! HTTP status. Application errors carry `{faultcode, faultstring,
//! debuginfo}`; framework errors (version 406, unknown path) carry
//! `{code, title, description}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferric_common::db::{DbError, INVALID_INPUT_MESSAGE};
use ferric_common::rpc::{Reason, detail};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Framework-style body (`code/title/description`).
    pub framework: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), framework: false }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_ACCEPTABLE, message: message.into(), framework: true }
    }
    /// A feature of a later microversion (Ironic's `NotAcceptable`, 406):
    /// `what` needs 1.`min`.
    pub fn too_old(min: u32, what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Request not acceptable. The minimal required API version should be 1.{min} ({what})"),
        )
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn from_db(e: DbError, what: impl FnOnce() -> String) -> ApiError {
        match e {
            DbError::NotFound => ApiError::not_found(what()),
            e if e.is_invalid_input() => ApiError::bad_request(INVALID_INPUT_MESSAGE),
            // the driver's words go to the log, not to clients
            e if e.is_retryable() => {
                tracing::warn!("database unavailable: {e}");
                ApiError::unavailable("The database is unavailable; retry later.")
            }
            e => {
                tracing::error!("database error: {e}");
                ApiError::internal("Database error; the API's log has the details.")
            }
        }
    }

    pub fn from_status(s: &tonic::Status) -> ApiError {
        let d = detail(s);
        let status = match d.reason() {
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::Invalid => StatusCode::BAD_REQUEST,
            Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::NodeLocked | Reason::Conflict => StatusCode::CONFLICT,
            Reason::Forbidden => StatusCode::FORBIDDEN,
            Reason::Unavailable | Reason::NotOwner => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Internal | Reason::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, d.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let inner = if self.framework {
            json!({"code": self.status.as_u16(), "title": self.status.canonical_reason().unwrap_or(""), "description": self.message})
        } else {
            let faultcode = if self.status.is_server_error() { "Server" } else { "Client" };
            json!({"faultcode": faultcode, "faultstring": self.message, "debuginfo": null})
        };
        let body = json!({"error_message": inner.to_string()});
        (self.status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A request body as JSON, or 400 naming why it is not.
pub fn json_value(body: &[u8]) -> ApiResult<serde_json::Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))
}
