//! The HTTP route (the original "Rust" producer): `POST /votes`, `POST /votes/batch`, and the
//! original paths `/rust/send_data`, `/rust`, `/insert` and `/`.
//!
//! The same handlers also serve the Wasm route's producer side ([`wasm_router`]): the
//! WebAssembly front (`ingest-wasm`) checks each vote, then forwards it over loopback to
//! `POST /wasm/votes` or `POST /wasm/votes/batch`, which cast it as [`Route::Wasm`] and answer
//! only after Kafka's acknowledgement.

use axum::{
    Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use bandvote_domain::{Route, ballot::BallotInput, reply as bodies};
use serde_json::Value;

use crate::{
    cast::{Caster, rejected},
    reply::{self, ApiError},
};

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_batch: usize,
}

#[derive(Clone)]
struct HttpRoute {
    caster: Caster,
    limits: Limits,
    route: Route,
}

/// The HTTP route: votes cast as [`Route::Http`].
pub fn router(caster: Caster, limits: Limits) -> Router {
    let one = post(cast_one);
    Router::new()
        .route("/votes", one.clone())
        .route("/rust/send_data", one.clone())
        .route("/rust", one.clone())
        .route("/insert", one.clone())
        .route("/", one)
        .route("/votes/batch", post(cast_batch))
        .with_state(HttpRoute { caster, limits, route: Route::Http })
}

/// The endpoints the Wasm front forwards to: votes cast as [`Route::Wasm`].
pub fn wasm_router(caster: Caster, limits: Limits) -> Router {
    Router::new()
        .route("/wasm/votes", post(cast_one))
        .route("/wasm/votes/batch", post(cast_batch))
        .with_state(HttpRoute { caster, limits, route: Route::Wasm })
}

async fn cast_one(State(http): State<HttpRoute>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let route = http.route;
    let value = read_json(route, body)?;
    let input = BallotInput::from_json(&value).inspect_err(|_| rejected(route, "invalid", 1))?;
    let ballot = http.caster.check(route, &input)?;
    let vote_id = http.caster.cast(route, ballot).await?;
    Ok(reply::accepted(&vote_id).into_response())
}

/// Takes a JSON array of votes, or `{"votes": [...]}`; all are checked before any is published.
async fn cast_batch(State(http): State<HttpRoute>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let route = http.route;
    let value = read_json(route, body)?;
    let votes = bodies::batch_votes(value, usize::MAX).map_err(|refused| {
        rejected(route, "malformed", 1);
        ApiError(refused)
    })?;
    if votes.len() > http.limits.max_batch {
        rejected(route, "too_large", votes.len());
        return Err(bodies::ErrorReply::batch_too_large(http.limits.max_batch, votes.len()).into());
    }
    let mut inputs = Vec::with_capacity(votes.len());
    let mut not_objects = Vec::new();
    for (index, vote) in votes.iter().enumerate() {
        match BallotInput::from_json(vote) {
            Ok(input) => inputs.push(input),
            Err(err) => not_objects.push((index, err)),
        }
    }
    if !not_objects.is_empty() {
        rejected(route, "invalid", not_objects.len());
        return Err(crate::cast::BatchError::Invalid { total: votes.len(), invalid: not_objects }.into());
    }
    let vote_ids = http.caster.cast_all(route, &inputs).await?;
    Ok(reply::accepted_all(&vote_ids).into_response())
}

/// Reads a request body as JSON, with a JSON error for a body too large or not JSON.
pub fn read_json(route: Route, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            rejected(route, "too_large", 1);
            ApiError::new(status, "body_too_large", rejection.body_text())
        } else {
            rejected(route, "malformed", 1);
            ApiError::new(status, "bad_request", rejection.body_text())
        }
    })?;
    bodies::parse_json(&body).map_err(|refused| {
        rejected(route, "malformed", 1);
        ApiError(refused)
    })
}
