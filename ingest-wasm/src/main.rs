//! bandvote's Wasm route: the HTTP vote front as a WebAssembly component (`wasi:http/proxy`).
//!
//! A Kafka client cannot run inside Wasm, so the route has two halves in one pod: this component,
//! run by `wasmtime serve`, takes the votes, and a native `bandvote-ingest` with
//! `INGEST_ROUTES=wasm` beside it produces them to Kafka.
//!
//! 1. The component reads and checks each request with `bandvote-domain`, the same code the native
//!    HTTP route runs, so a bad request gets the same status and JSON body on both routes.
//! 2. It gives each vote its id (the client's `vote_id`, else a new UUIDv7), so that a refusal can
//!    name it for a safe retry, and forwards the checked votes over loopback ([`forward`]) to
//!    `POST {INGEST_URL}/wasm/votes` or `/wasm/votes/batch`.
//! 3. The native side casts them as route `wasm` and answers after Kafka's acknowledgement (or
//!    with its own refusal, such as a roster miss); the component passes that answer on.
//!    When the native side does not answer, the reply is 503 `unavailable`: never a false success.
//!
//! `wasmtime serve` makes a fresh instance for every request, so nothing here outlives a request;
//! the settings are read from the environment each time (see [`Settings`]).

mod check;
mod forward;

use bandvote_domain::{
    Ballot, VoteId,
    front::{VotePath, new_vote_id},
    reply::{self, ErrorCode, ErrorReply},
};
use serde_json::{Value, json};
use wstd::http::{Body, BodyExt, Error, HeaderValue, Method, Request, Response, StatusCode};

use crate::forward::Native;

/// The component's settings, from its environment (`wasmtime serve --env NAME=value`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The native producer (`bandvote-ingest` with `INGEST_ROUTES=wasm`): `INGEST_URL`.
    pub ingest_url: String,
    /// The native producer's ops port, where its `/readyz` is: `INGEST_OPS_URL`.
    pub ingest_ops_url: String,
    /// Longest wait for the native side's answer, in milliseconds: `INGEST_TIMEOUT_MS`. The
    /// native side waits up to its `KAFKA_PRODUCE_TIMEOUT` (5 s) for Kafka, so 7 s by default.
    pub ingest_timeout_ms: u64,
    /// Largest request body, in bytes: `MAX_BODY_BYTES`, as on the native route.
    pub max_body_bytes: usize,
    /// Most votes in one batch: `MAX_BATCH_VOTES`, as on the native route.
    pub max_batch_votes: usize,
}

impl Settings {
    pub fn from_env() -> Self {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
        }
        fn url(name: &str, default: &str) -> String {
            std::env::var(name)
                .ok()
                .filter(|url| !url.trim().is_empty())
                .map_or_else(|| default.to_owned(), |url| url.trim().trim_end_matches('/').to_owned())
        }
        Settings {
            ingest_url: url("INGEST_URL", "http://127.0.0.1:8090"),
            ingest_ops_url: url("INGEST_OPS_URL", "http://127.0.0.1:9090"),
            ingest_timeout_ms: number("INGEST_TIMEOUT_MS", 7_000),
            max_body_bytes: number("MAX_BODY_BYTES", 256 * 1024),
            max_batch_votes: number("MAX_BATCH_VOTES", 1000),
        }
    }
}

/// What a path does.
enum Endpoint {
    Vote,
    Batch,
    Healthz,
    Readyz,
}

/// The endpoint a path names. Vote paths are served with and without the `/wasm` prefix, so the
/// component works behind an ingress that keeps the prefix and one that strips it.
fn endpoint(path: &str) -> Option<Endpoint> {
    match path {
        "/healthz" => return Some(Endpoint::Healthz),
        "/readyz" => return Some(Endpoint::Readyz),
        _ => {}
    }
    let path = match path.strip_prefix("/wasm") {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    match VotePath::of(path)? {
        VotePath::One => Some(Endpoint::Vote),
        VotePath::Batch => Some(Endpoint::Batch),
    }
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let settings = Settings::from_env();
    let (parts, body) = request.into_parts();
    // Every X-Forwarded-For line, in order, as one value.
    let forwarded_for: Vec<&[u8]> = parts.headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
    let forwarded_for =
        (!forwarded_for.is_empty()).then(|| HeaderValue::from_bytes(&forwarded_for.join(&b", "[..])).ok()).flatten();
    let native = Native::new(&settings, forwarded_for);
    let method = parts.method.to_string();
    let answer = match (endpoint(parts.uri.path()), parts.method) {
        (Some(Endpoint::Vote), Method::POST) => cast_one(&settings, &native, body).await,
        (Some(Endpoint::Batch), Method::POST) => cast_batch(&settings, &native, body).await,
        (Some(Endpoint::Healthz), Method::GET) => Ok(json_response(200, &json!({"status": "ok"}))),
        (Some(Endpoint::Readyz), Method::GET) => Ok(match native.ready().await {
            Ok(()) => json_response(200, &json!({"status": "ready"})),
            Err(reason) => json_response(503, &json!({"status": "unavailable", "reason": reason})),
        }),
        (Some(Endpoint::Healthz | Endpoint::Readyz), _) => Err(ErrorReply::method_not_allowed(&method, "GET")),
        (Some(_), _) => Err(ErrorReply::method_not_allowed(&method, "POST with a JSON vote")),
        (None, _) => Err(ErrorReply::new(ErrorCode::NotFound, "no such path; votes go to POST /wasm/votes")),
    };
    Ok(answer.unwrap_or_else(|refused| json_response(refused.status, &refused.body())))
}

/// One vote: check it, give it its id, forward it.
async fn cast_one(settings: &Settings, native: &Native, body: Body) -> Result<Response<Body>, ErrorReply> {
    let ballot = check::vote(&read_body(body, settings.max_body_bytes).await?)?;
    let (vote, vote_id) = forwarded(ballot);
    native.cast(&vote, &vote_id).await
}

/// A batch: every vote is checked before any is forwarded, as on the native route.
async fn cast_batch(settings: &Settings, native: &Native, body: Body) -> Result<Response<Body>, ErrorReply> {
    let ballots = check::batch(&read_body(body, settings.max_body_bytes).await?, settings.max_batch_votes)
        .map_err(|(refused, _)| refused)?;
    let (votes, vote_ids): (Vec<Value>, Vec<VoteId>) = ballots.into_iter().map(forwarded).unzip();
    native.cast_all(&Value::Array(votes), &vote_ids).await
}

/// The checked vote as the native side takes it, with its id.
fn forwarded(ballot: Ballot) -> (Value, VoteId) {
    let vote_id = ballot.vote_id.unwrap_or_else(new_vote_id);
    let vote = json!({
        "name": ballot.band,
        "album": ballot.album,
        "year": ballot.year.get(),
        "rank": ballot.rank.get(),
        "vote_id": vote_id.as_str(),
        "voter_id": ballot.voter_id,
    });
    (vote, vote_id)
}

/// Reads the request body, at most `most` bytes.
async fn read_body(body: Body, most: usize) -> Result<Vec<u8>, ErrorReply> {
    if body.content_length().is_some_and(|length| length > most as u64) {
        return Err(ErrorReply::body_too_large(reply::BODY_TOO_LARGE));
    }
    let mut body = body.into_boxed_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            ErrorReply::new(ErrorCode::BadRequest, format!("Failed to buffer the request body: {err}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > most {
                return Err(ErrorReply::body_too_large(reply::BODY_TOO_LARGE));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// A JSON reply.
fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a status and a header are a valid response")
}
