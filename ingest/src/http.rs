//! The HTTP route (the original "Rust" producer): `POST /votes`, `POST /votes/batch`, and the
//! original paths `/rust/send_data`, `/rust`, `/insert` and `/`.

use axum::{
    Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use bandvote_domain::{Route, ballot::BallotInput};
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
}

pub fn router(caster: Caster, limits: Limits) -> Router {
    let one = post(cast_one);
    Router::new()
        .route("/votes", one.clone())
        .route("/rust/send_data", one.clone())
        .route("/rust", one.clone())
        .route("/insert", one.clone())
        .route("/", one)
        .route("/votes/batch", post(cast_batch))
        .with_state(HttpRoute { caster, limits })
}

async fn cast_one(State(http): State<HttpRoute>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let value = read_json(Route::Http, body)?;
    let input = BallotInput::from_json(&value).inspect_err(|_| rejected(Route::Http, "invalid", 1))?;
    let ballot = http.caster.check(Route::Http, &input)?;
    let vote_id = http.caster.cast(Route::Http, ballot).await?;
    Ok(reply::accepted(&vote_id).into_response())
}

/// Takes a JSON array of votes, or `{"votes": [...]}`; all are checked before any is published.
async fn cast_batch(State(http): State<HttpRoute>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let value = read_json(Route::Http, body)?;
    let votes = match value {
        Value::Array(votes) => votes,
        Value::Object(mut object) => match object.remove("votes") {
            Some(Value::Array(votes)) => votes,
            _ => return Err(malformed("a batch must be a JSON array of votes or {\"votes\": [...]}")),
        },
        _ => return Err(malformed("a batch must be a JSON array of votes or {\"votes\": [...]}")),
    };
    if votes.is_empty() {
        return Err(malformed("the batch holds no votes"));
    }
    if votes.len() > http.limits.max_batch {
        rejected(Route::Http, "too_large", votes.len());
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch may hold at most {} votes, got {}", http.limits.max_batch, votes.len()),
        ));
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
        rejected(Route::Http, "invalid", not_objects.len());
        return Err(crate::cast::BatchError::Invalid { total: votes.len(), invalid: not_objects }.into());
    }
    let vote_ids = http.caster.cast_all(Route::Http, &inputs).await?;
    Ok(reply::accepted_all(&vote_ids).into_response())
}

fn malformed(message: &str) -> ApiError {
    rejected(Route::Http, "malformed", 1);
    ApiError::malformed(message)
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
    serde_json::from_slice(&body).map_err(|err| {
        rejected(route, "malformed", 1);
        ApiError::malformed(format!("the body is not valid JSON: {err}"))
    })
}
