//! The JSON error answer of the services that are not vote routes (the logs API): the body is the
//! one every bandvote service answers with, `domain::reply::ErrorReply`
//! (`{"error": {"code": ..., "message": ..., ...details}}`); this adds the axum response.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bandvote_domain::reply::ErrorReply;
use serde_json::Value;

#[derive(Debug)]
pub struct ApiError(pub ErrorReply);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError(ErrorReply::new(status.as_u16(), code, message))
    }

    /// Adds the fields of `details` (a JSON object) to the error body.
    pub fn with_details(self, details: Value) -> Self {
        ApiError(self.0.with_details(details))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}
