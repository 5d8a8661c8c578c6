//! Every HTTP reply is JSON, errors included: the original Locust clients call `res.json()` on
//! whatever comes back. The bodies are defined once in `bandvote_domain::reply` (the Wasm front
//! answers with the same ones); errors are mapped to a status once, here.

use axum::Json;
use bandvote_domain::{
    Refused, VoteId,
    reply::{ErrorCode, ErrorReply},
};
pub use bandvote_ops::reply::ApiError;
use serde_json::{Value, json};

use crate::cast::{BatchError, CastError};

impl From<CastError> for ApiError {
    fn from(err: CastError) -> Self {
        let err_message = err.to_string();
        match err {
            CastError::Invalid(invalid) => invalid.into(),
            CastError::Closed { window } => ApiError(ErrorReply::voting_closed(&window)),
            CastError::Refused { reason, .. } => ApiError(ErrorReply::refused(reason, err_message)),
            CastError::Unavailable { vote_id, error } => {
                ApiError(ErrorReply::unavailable(format!("{error}; try again with this vote_id")))
                    .with_details(json!({ "vote_id": vote_id.as_str() }))
            }
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(err: BatchError) -> Self {
        let message = err.to_string();
        match err {
            BatchError::Invalid { total, invalid } => ApiError(ErrorReply::invalid_batch(total, &invalid)),
            BatchError::Closed { window } => ApiError(ErrorReply::voting_closed(&window)),
            BatchError::Refused { refused, .. } => {
                let votes: Vec<Value> =
                    refused.iter().map(|(index, reason)| json!({"index": index, "code": reason.code()})).collect();
                let all_closed = refused.iter().all(|(_, r)| *r == Refused::VotingClosed);
                ApiError::new(ErrorCode::BatchRefused { all_closed }, message).with_details(json!({ "votes": votes }))
            }
            BatchError::Partial { accepted, failed, .. } => {
                let failed: Vec<Value> =
                    failed.iter().map(|(index, id)| json!({"index": index, "vote_id": id.as_str()})).collect();
                ApiError(ErrorReply::unavailable(message))
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
    Json(bandvote_domain::reply::accepted(vote_id))
}

/// The reply to an accepted batch.
pub fn accepted_all(vote_ids: &[VoteId]) -> Json<Value> {
    Json(bandvote_domain::reply::accepted_all(vote_ids))
}
