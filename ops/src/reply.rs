//! The JSON error body every bandvote HTTP service answers with:
//! `{"error": {"code": ..., "message": ..., ...details}}`. `code` is stable and meant for
//! programs; `message` says, for people, what was wrong and with which field.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// An error reply: a status, a stable code, a message and optional details merged into the body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Value::Null }
    }

    /// Adds the fields of `details` (a JSON object) to the error body.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(error), Value::Object(details)) = (error.as_object_mut(), self.details) {
            error.extend(details);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
