//! The HTTP route (the original "Rust" producer): `POST /votes`, `POST /votes/batch`, and the
//! original paths `/rust/send_data`, `/rust`, `/insert` and `/`; and `GET /openapi.json`, the
//! hand-written OpenAPI 3.1 document of the HTTP port ([`OPENAPI`]).
//!
//! The same handlers also serve the Wasm route's producer side ([`wasm_router`]): the
//! WebAssembly front (`ingest-wasm`) checks each vote, then forwards it over loopback to
//! `POST /wasm/votes` or `POST /wasm/votes/batch`, which cast it as [`Route::Wasm`] and answer
//! only after Kafka's acknowledgement.

use axum::{
    Router,
    body::Bytes,
    extract::{FromRef, FromRequest, Request, State},
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

use crate::{
    cast::{BatchError, Caster},
    limits::{Budget, Refusal},
    reply::{self, ApiError, Rejection},
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

impl FromRef<HttpRoute> for Route {
    fn from_ref(http: &HttpRoute) -> Route {
        http.route
    }
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
    JsonVote(input): JsonVote,
) -> Result<Response, Rejection> {
    let refused = |error: ApiError| Rejection::new(http.route, 1, error);
    let ballot = http.caster.check(&input).map_err(|e| refused(e.into()))?;
    let delivery = http.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_id = http.caster.cast(http.route, ballot, delivery).await.map_err(|e| refused(e.into()))?;
    Ok(reply::accepted(&vote_id).into_response())
}

async fn cast_batch(
    State(http): State<HttpRoute>,
    headers: HeaderMap,
    JsonBatch(inputs): JsonBatch,
) -> Result<Response, Rejection> {
    let delivery = http.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_ids =
        http.caster.cast_all(http.route, &inputs, delivery).await.map_err(|e| Rejection::batch(http.route, e))?;
    Ok(reply::accepted_all(&vote_ids).into_response())
}

/// A vote in a request's body: a JSON object within the body limit, read as a [`BallotInput`]
/// (its fields are checked by the caster). Anything else is refused as one vote of the route.
pub struct JsonVote(pub BallotInput);

impl<S> FromRequest<S> for JsonVote
where
    S: Send + Sync,
    Route: FromRef<S>,
{
    type Rejection = Rejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Rejection> {
        let route = Route::from_ref(state);
        let RawBody(body) = RawBody::from_request(request, state).await?;
        let input = bodies::read_vote(&body).map_err(|error| Rejection::new(route, 1, ApiError(error)))?;
        input.map(JsonVote).map_err(|error| Rejection::new(route, 1, error))
    }
}

/// The votes of a batch body: a JSON array of votes, or `{"votes": [...]}`, of at most
/// `MAX_BATCH_VOTES`, each a JSON object. The client's rate limit is charged a vote for each vote
/// of the batch (the first at admission) before the votes are read, so that a batch refused for
/// its votes is paid for too.
pub struct JsonBatch(pub Vec<BallotInput>);

impl FromRequest<HttpRoute> for JsonBatch {
    type Rejection = Rejection;

    async fn from_request(request: Request, http: &HttpRoute) -> Result<Self, Rejection> {
        let route = http.route;
        let budget = request.extensions().get::<Budget>().cloned();
        let RawBody(body) = RawBody::from_request(request, http).await?;
        let votes = bodies::read_batch(&body).map_err(|error| Rejection::new(route, 1, ApiError(error)))?;
        if votes.len() > http.limits.max_batch {
            let error = ErrorReply::batch_too_large(http.limits.max_batch, votes.len());
            return Err(Rejection::new(route, votes.len(), error));
        }
        if let Some(budget) = budget {
            budget.rest_of_batch(votes.len()).map_err(|refusal| Rejection::Counted(Refusal::response(refusal)))?;
        }
        let total = votes.len();
        let inputs = bodies::batch_objects(votes)
            .map_err(|invalid| Rejection::batch(route, BatchError::Invalid { total, invalid }))?;
        Ok(JsonBatch(inputs))
    }
}

/// A request's body as it came, within the body limit; anything else is refused as one vote of
/// the route.
pub struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
    Route: FromRef<S>,
{
    type Rejection = Rejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Rejection> {
        let route = Route::from_ref(state);
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::BodyTooLarge, rejection.body_text())
            } else {
                // The rejection's own status (400, or 411, 415 ...), with the code of an unread body.
                let reply = ErrorReply::new(ErrorCode::BadRequest, rejection.body_text());
                ApiError(ErrorReply { status: status.as_u16(), ..reply })
            };
            Rejection::new(route, 1, error)
        })?;
        Ok(RawBody(body))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::extract::DefaultBodyLimit;
    use bandvote_domain::Contest;
    use metrics_util::debugging::DebuggingRecorder;
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{self, Published, post, vote, vote_counters};

    /// The paths the other routers of the HTTP port serve: the `/grpc/insert` front and the load
    /// balancer's health check (readiness and metrics are on the ops port).
    const OTHER_PATHS: [(&str, &str); 3] = [("/grpc/insert", "post"), ("/grpc", "post"), ("/healthz", "get")];

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("ingest/openapi.json is JSON")
    }

    const LIMITS: Limits = Limits { max_body_bytes: 1024, max_batch: 10 };

    /// The HTTP and Wasm routes of one caster for `contest`, publishing to memory.
    fn routes(contest: Contest) -> (Router, Published) {
        let (caster, published) = testing::caster(contest);
        let router = router(caster.clone(), LIMITS).merge(wasm_router(caster, LIMITS));
        (router.layer(DefaultBodyLimit::max(LIMITS.max_body_bytes)), published)
    }

    fn offline_router() -> Router {
        routes(Contest::default()).0
    }

    #[tokio::test]
    async fn votes_and_batches_are_published_in_order_and_acknowledged_without_a_broker() {
        let recorder = DebuggingRecorder::new();
        let counters = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (router, published) = routes(Contest::default());

        let (status, reply) = post(&router, "/votes", vote("Alpha").to_string()).await;
        assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")), "{reply}");
        let batch = json!({"votes": [vote("Beta"), vote("Gamma"), vote("Beta")]});
        let (status, batch_reply) = post(&router, "/votes/batch", batch.to_string()).await;
        assert_eq!((status, batch_reply["accepted"].as_u64()), (200, Some(3)), "{batch_reply}");
        let (status, wasm_reply) = post(&router, "/wasm/votes", vote("Delta").to_string()).await;
        assert_eq!(status, 200, "{wasm_reply}");

        let published = published.lock().expect("the published votes").clone();
        let seen: Vec<(&str, Route, &str)> =
            published.iter().map(|e| (e.ballot.band.as_str(), e.route, e.vote_id.as_str())).collect();
        let ids: Vec<&str> =
            batch_reply["vote_ids"].as_array().expect("ids").iter().filter_map(Value::as_str).collect();
        assert_eq!(
            seen,
            [
                ("Alpha", Route::Http, reply["vote_id"].as_str().expect("an id")),
                ("Beta", Route::Http, ids[0]),
                ("Gamma", Route::Http, ids[1]),
                ("Beta", Route::Http, ids[2]),
                ("Delta", Route::Wasm, wasm_reply["vote_id"].as_str().expect("an id")),
            ],
            "each vote published once, in the order sent, with the id it was answered with"
        );
        let counted = vote_counters(&counters);
        assert_eq!(counted.get("bandvote_ingest_votes_accepted_total route=http"), Some(&4), "{counted:?}");
        assert_eq!(counted.get("bandvote_ingest_votes_accepted_total route=wasm"), Some(&1), "{counted:?}");
        assert!(!counted.keys().any(|k| k.contains("rejected")), "nothing was refused: {counted:?}");
    }

    #[tokio::test]
    async fn each_refused_request_is_counted_once_under_its_reason_and_publishes_nothing() {
        let recorder = DebuggingRecorder::new();
        let counters = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (open, published) = routes(Contest::default());
        let closed = testing::closed_contest();
        let (closed, closed_published) = routes(closed);
        let eleven = Value::Array((0..11).map(|i| vote(&format!("Band {i}"))).collect()).to_string();
        // (router, path, body, status, code, reason, votes counted)
        let cases: [(&Router, &str, String, u16, &str, &str, u64); 10] = [
            (&open, "/votes", "{".into(), 400, "malformed_json", "malformed", 1),
            (&open, "/votes", json!({"name": "A"}).to_string(), 400, "invalid_vote", "invalid", 1),
            (&open, "/votes", "x".repeat(2000), 413, "body_too_large", "too_large", 1),
            (&open, "/wasm/votes", "[1]".into(), 400, "invalid_vote", "invalid", 1),
            (&open, "/votes/batch", "[]".into(), 400, "malformed_json", "malformed", 1),
            (&open, "/votes/batch", eleven, 413, "batch_too_large", "too_large", 11),
            (
                &open,
                "/votes/batch",
                json!([vote("A"), 5, vote("B"), "x"]).to_string(),
                400,
                "invalid_vote",
                "invalid",
                2,
            ),
            (
                &open,
                "/votes/batch",
                json!([vote("A"), {"name": "B"}, {"rank": 1}]).to_string(),
                400,
                "invalid_vote",
                "invalid",
                2,
            ),
            (&closed, "/votes", vote("A").to_string(), 403, "voting_closed", "voting_closed", 1),
            (
                &closed,
                "/votes/batch",
                json!([vote("A"), vote("B"), vote("C")]).to_string(),
                403,
                "voting_closed",
                "voting_closed",
                3,
            ),
        ];
        for (router, path, body, status, code, reason, votes) in cases {
            let before = vote_counters(&counters);
            let (answered, reply) = post(router, path, body).await;
            assert_eq!((answered, reply["error"]["code"].as_str()), (status, Some(code)), "{path}: {reply}");
            let route = if path.starts_with("/wasm") { "wasm" } else { "http" };
            let key = format!("bandvote_ingest_votes_rejected_total route={route},reason={reason}");
            let mut expected = before.clone();
            *expected.entry(key).or_default() += votes;
            assert_eq!(vote_counters(&counters), expected, "{path} {code}: counted once, under {reason}");
        }
        assert!(published.lock().expect("votes").is_empty() && closed_published.lock().expect("votes").is_empty());
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
