//! The HTTP route (the original "Rust" producer): `POST /votes`, `POST /votes/batch`, and the
//! original paths `/rust/send_data`, `/rust`, `/insert` and `/`; and `GET /openapi.json`, the
//! hand-written OpenAPI 3.1 document of the HTTP port ([`OPENAPI`]).
//!
//! The same handlers also serve the Wasm route's producer side ([`wasm_router`]): the
//! WebAssembly front (`ingest-wasm`) checks each vote, then forwards it over loopback to
//! `POST /wasm/votes` or `POST /wasm/votes/batch`, which cast it as [`Route::Wasm`] and answer
//! only after Kafka's acknowledgement.

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bandvote_domain::{
    Route,
    ballot::BallotInput,
    front::{BATCH_PATH, NOOP_HEADER, VOTE_PATHS},
    reply::{self as bodies, ErrorCode, ErrorReply},
};
use serde_json::Value;

use crate::{
    cast::{Caster, rejected},
    limits::{Budget, Refusal},
    reply::{self, ApiError},
};

/// The OpenAPI 3.1 document of the HTTP port: the HTTP route, the `/grpc/insert` front and
/// `/healthz`.
pub const OPENAPI: &str = include_str!("../openapi.json");

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

/// The HTTP route: votes cast as [`Route::Http`], and the OpenAPI document.
pub fn router(caster: Caster, limits: Limits) -> Router {
    let router = VOTE_PATHS.into_iter().fold(Router::new(), |router, path| router.route(path, post(cast_one)));
    router
        .route(BATCH_PATH, post(cast_batch))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .with_state(HttpRoute { caster, limits, route: Route::Http })
}

/// The endpoints the Wasm front forwards to: votes cast as [`Route::Wasm`].
pub fn wasm_router(caster: Caster, limits: Limits) -> Router {
    Router::new()
        .route("/wasm/votes", post(cast_one))
        .route("/wasm/votes/batch", post(cast_batch))
        .with_state(HttpRoute { caster, limits, route: Route::Wasm })
}

async fn cast_one(
    State(http): State<HttpRoute>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let route = http.route;
    let value = read_json(route, body)?;
    let input = BallotInput::from_json(&value).inspect_err(|_| rejected(route, "invalid", 1))?;
    let ballot = http.caster.check(route, &input)?;
    let delivery = http.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_id = http.caster.cast(route, ballot, delivery).await?;
    Ok(reply::accepted(&vote_id).into_response())
}

/// Takes a JSON array of votes, or `{"votes": [...]}`; all are checked before any is published.
/// The client's rate limit is charged a vote for each vote of the batch (the first at admission).
async fn cast_batch(
    State(http): State<HttpRoute>,
    budget: Option<Extension<Budget>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let route = http.route;
    let value = read_json(route, body).map_err(IntoResponse::into_response)?;
    let votes = bodies::batch_votes(value, usize::MAX).map_err(|refused| {
        rejected(route, "malformed", 1);
        ApiError(refused).into_response()
    })?;
    if votes.len() > http.limits.max_batch {
        rejected(route, "too_large", votes.len());
        return Err(
            ApiError::from(bodies::ErrorReply::batch_too_large(http.limits.max_batch, votes.len())).into_response()
        );
    }
    if let Some(Extension(budget)) = budget {
        budget.rest_of_batch(votes.len()).map_err(Refusal::response)?;
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
        let invalid = crate::cast::BatchError::Invalid { total: votes.len(), invalid: not_objects };
        return Err(ApiError::from(invalid).into_response());
    }
    let delivery = http.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_ids =
        http.caster.cast_all(route, &inputs, delivery).await.map_err(|e| ApiError::from(e).into_response())?;
    Ok(reply::accepted_all(&vote_ids).into_response())
}

/// Reads a request body as JSON, with a JSON error for a body too large or not JSON.
pub fn read_json(route: Route, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            rejected(route, "too_large", 1);
            ApiError::new(ErrorCode::BodyTooLarge, rejection.body_text())
        } else {
            rejected(route, "malformed", 1);
            // The rejection's own status (400, or 411, 415 ...), with the code of an unread body.
            let reply = ErrorReply::new(ErrorCode::BadRequest, rejection.body_text());
            ApiError(ErrorReply { status: status.as_u16(), ..reply })
        }
    })?;
    bodies::parse_json(&body).map_err(|refused| {
        rejected(route, "malformed", 1);
        ApiError(refused)
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use bandvote_ops::config::KafkaArgs;
    use serde_json::Value;

    use super::*;
    use crate::publisher::Publisher;

    /// The paths the other routers of the HTTP port serve: the `/grpc/insert` front and the load
    /// balancer's health check (readiness and metrics are on the ops port).
    const OTHER_PATHS: [(&str, &str); 3] = [("/grpc/insert", "post"), ("/grpc", "post"), ("/healthz", "get")];

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("ingest/openapi.json is JSON")
    }

    /// A router whose producer points at a port nothing listens on: enough for answers that never
    /// reach Kafka.
    fn offline_router() -> Router {
        let kafka = KafkaArgs {
            brokers: "127.0.0.1:9".into(),
            topic: "unused".into(),
            partitions: 1,
            replication_factor: 1,
            create_topics: false,
            security: Default::default(),
        };
        let publisher = Publisher::new(&kafka, Duration::from_millis(100)).expect("a producer");
        router(Caster::new(publisher, Default::default(), false), Limits { max_body_bytes: 1024, max_batch: 10 })
    }

    #[test]
    fn the_document_names_every_path_and_only_those() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let mut served: BTreeSet<(String, String)> =
            VOTE_PATHS.iter().map(|path| ((*path).to_owned(), "post".to_owned())).collect();
        served.insert(("/votes/batch".into(), "post".into()));
        served.insert(("/openapi.json".into(), "get".into()));
        served.extend(OTHER_PATHS.iter().map(|(path, method)| ((*path).to_owned(), (*method).to_owned())));
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().expect("a path item").keys().map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_reference_resolves() {
        fn walk<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
            match value {
                Value::Object(object) => {
                    if let Some(Value::String(target)) = object.get("$ref") {
                        found.push(target);
                    }
                    object.values().for_each(|v| walk(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let document = document();
        let mut references = Vec::new();
        walk(&document, &mut references);
        assert!(!references.is_empty());
        for target in references {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(document.pointer(pointer).is_some(), "{target} resolves to nothing");
        }
    }

    #[tokio::test]
    async fn serves_the_document_and_the_vote_paths() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        let server = tokio::spawn(async move { axum::serve(listener, offline_router()).await });
        let client = reqwest::Client::new();

        let reply = client.get(format!("{base}/openapi.json")).send().await.expect("an answer");
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(reply.text().await.expect("a body"), OPENAPI);

        // Each documented POST path of this router exists: another method is refused (405), not
        // unknown (404). A body that is not JSON is refused before Kafka is asked.
        for path in VOTE_PATHS.iter().chain(&["/votes/batch"]) {
            let get = client.get(format!("{base}{path}")).send().await.expect("an answer");
            assert_eq!(get.status(), 405, "GET {path}");
            let post = client.post(format!("{base}{path}")).body("{").send().await.expect("an answer");
            assert_eq!(post.status(), 400, "POST {path}");
            let body: Value = post.json().await.expect("a JSON error");
            assert_eq!(body["error"]["code"], "malformed_json", "POST {path}");
        }
        server.abort();
    }
}
