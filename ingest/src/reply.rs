//! Every HTTP reply is JSON, errors included: the original Locust clients call `res.json()` on
//! whatever comes back. Errors are mapped to a status once, here.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bandvote_domain::{InvalidVote, VoteId};
use serde_json::{Value, json};

use crate::cast::{BatchError, CastError};

/// An error reply: `{"error": {"code": ..., "message": ..., ...details}}`.
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

    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

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

pub fn field_errors(invalid: &InvalidVote) -> Value {
    invalid.errors.iter().map(|e| json!({"field": e.field, "problem": e.problem})).collect()
}

impl From<InvalidVote> for ApiError {
    fn from(invalid: InvalidVote) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_vote", invalid.to_string())
            .with_details(json!({ "fields": field_errors(&invalid) }))
    }
}

impl From<CastError> for ApiError {
    fn from(err: CastError) -> Self {
        match err {
            CastError::Invalid(invalid) => invalid.into(),
            CastError::Unavailable { vote_id, error } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{error}; try again with this vote_id"),
            )
            .with_details(json!({ "vote_id": vote_id.as_str() })),
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(err: BatchError) -> Self {
        let message = err.to_string();
        match err {
            BatchError::Invalid { invalid, .. } => {
                let votes: Vec<Value> =
                    invalid.iter().map(|(index, e)| json!({"index": index, "fields": field_errors(e)})).collect();
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_vote", message).with_details(json!({ "votes": votes }))
            }
            BatchError::Partial { accepted, failed, .. } => {
                let failed: Vec<Value> =
                    failed.iter().map(|(index, id)| json!({"index": index, "vote_id": id.as_str()})).collect();
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .with_details(json!({ "accepted": ids(&accepted), "failed": failed }))
            }
        }
    }
}

fn ids(ids: &[VoteId]) -> Vec<&str> {
    ids.iter().map(VoteId::as_str).collect()
}

/// The reply to an accepted vote.
pub fn accepted(vote_id: &VoteId) -> Json<Value> {
    Json(json!({"status": "accepted", "vote_id": vote_id.as_str()}))
}

/// The reply to an accepted batch.
pub fn accepted_all(vote_ids: &[VoteId]) -> Json<Value> {
    Json(json!({"status": "accepted", "accepted": vote_ids.len(), "vote_ids": ids(vote_ids)}))
}
