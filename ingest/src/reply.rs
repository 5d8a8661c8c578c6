//! Every HTTP reply is JSON, errors included: the original Locust clients call `res.json()` on
//! whatever comes back. The bodies are defined once in `bandvote_domain::reply` (the Wasm front
//! answers with the same ones); errors are mapped to a status once, here.
//!
//! Votes turned away are counted (`bandvote_ingest_votes_rejected_total`, by route and reason)
//! where the error becomes the answer, and only there: [`Rejection`]'s response on the HTTP
//! routes, [`count_rejected`] where the gRPC route makes its `Status`.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use bandvote_domain::{
    Route, VoteId,
    reply::{ErrorCode, ErrorReply},
};
pub use bandvote_ops::reply::ApiError;
use serde_json::{Value, json};

use crate::cast::{BatchError, CastError};

/// The error answer of a vote route, with how many votes it turns away: they are counted when it
/// becomes the response.
#[derive(Debug)]
pub enum Rejection {
    Votes {
        route: Route,
        votes: usize,
        error: ApiError,
    },
    /// An answer whose refusal was counted where it was decided: by admission (rate limits,
    /// overload) or by the gRPC server that `/grpc/insert` passes the vote to.
    Counted(Response),
}

impl Rejection {
    /// `error`, turning away `votes` votes of `route`.
    pub fn new(route: Route, votes: usize, error: impl Into<ApiError>) -> Self {
        Rejection::Votes { route, votes, error: error.into() }
    }

    /// A batch refused with `err`.
    pub fn batch(route: Route, err: BatchError) -> Self {
        let votes = err.votes_turned_away();
        Rejection::new(route, votes, err)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Votes { route, votes, error } => {
                count_rejected(route, error.code(), votes);
                error.into_response()
            }
            Rejection::Counted(response) => response,
        }
    }
}

/// Counts `votes` votes of `route` turned away with `code`, under the reason the code gives:
/// `invalid`, `malformed`, `too_large`, `unavailable`, `refused` (a batch the contest's rule
/// refuses), or the refusal's own code (`voting_closed`, `limit_reached`, ...). Admission's
/// refusals (`rate_limited`, `overloaded`, `timeout`) are counted by admission and have no reason
/// here.
pub fn count_rejected(route: Route, code: ErrorCode, votes: usize) {
    let reason = match code {
        ErrorCode::InvalidVote => "invalid",
        ErrorCode::MalformedJson | ErrorCode::BadRequest => "malformed",
        ErrorCode::BodyTooLarge | ErrorCode::BatchTooLarge => "too_large",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Refused(reason) => reason.code(),
        ErrorCode::BatchRefused { .. } => "refused",
        ErrorCode::RateLimited
        | ErrorCode::Overloaded
        | ErrorCode::Timeout
        | ErrorCode::UpstreamError
        | ErrorCode::NotFound
        | ErrorCode::MethodNotAllowed
        | ErrorCode::InvalidParameter
        | ErrorCode::TallyPending
        | ErrorCode::TooManyGroups => return,
    };
    metrics::counter!("bandvote_ingest_votes_rejected_total", "route" => route.as_str(), "reason" => reason)
        .increment(votes as u64);
}

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
            BatchError::Closed { window, .. } => ApiError(ErrorReply::voting_closed(&window)),
            BatchError::Refused { ref refused, .. } => {
                let votes: Vec<Value> =
                    refused.iter().map(|(index, reason)| json!({"index": index, "code": reason.code()})).collect();
                ApiError::new(err.code(), message).with_details(json!({ "votes": votes }))
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
