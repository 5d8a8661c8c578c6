//! The JSON error answer of every bandvote HTTP service: the body is `domain::reply::ErrorReply`
//! (`{"error": {"code": ..., "message": ..., ...details}}`, shared with the Wasm front); this
//! adds the axum response.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bandvote_domain::{
    InvalidVote,
    reply::{ErrorCode, ErrorReply},
};
use serde_json::Value;

#[derive(Debug)]
pub struct ApiError(pub ErrorReply);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ErrorReply::new(code, message))
    }

    /// 400 `malformed_json`: the body is not JSON, or not the shape the path takes.
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError(ErrorReply::malformed(message))
    }

    /// Adds the fields of `details` (a JSON object) to the error body.
    pub fn with_details(self, details: Value) -> Self {
        ApiError(self.0.with_details(details))
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
}

impl From<ErrorReply> for ApiError {
    fn from(reply: ErrorReply) -> Self {
        ApiError(reply)
    }
}

impl From<InvalidVote> for ApiError {
    fn from(invalid: InvalidVote) -> Self {
        ApiError(ErrorReply::invalid_vote(&invalid))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}
