//! Forwarding checked votes to the native producer over loopback (`wasi:http/outgoing-handler`).
//!
//! Invariant: the component answers success only when the native side answered 200 with an
//! accepted body, which it does only after Kafka acknowledged every vote. A native side that is
//! down, slow or answers something unexpected gives 503 `unavailable` (or 502 `upstream_error`)
//! naming the vote ids, so a retry with those ids cannot count a vote twice.

use bandvote_domain::{VoteId, reply::ErrorReply};
use serde_json::{Value, json};
use std::time::Duration;

use wstd::http::{Body, Client, HeaderValue, Method, Request, Response, StatusCode};

use crate::{Settings, json_response};

/// How long to wait for a TCP connection to the native side: it is on the same host.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The pause before `/readyz` asks again after a failed exchange.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long `/readyz` waits for the native side's `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_millis(3000);

/// The native producer.
pub struct Native {
    url: String,
    ops_url: String,
    timeout: Duration,
    /// The request's `X-Forwarded-For`, passed on as it came so that the native side's per-client
    /// limit sees the addresses the proxies in front of the pod appended (the component cannot see
    /// its own peer, so it appends nothing; the native side is reachable only from inside the pod).
    forwarded_for: Option<HeaderValue>,
}

impl Native {
    pub fn new(settings: &Settings, forwarded_for: Option<HeaderValue>) -> Self {
        Native {
            url: settings.ingest_url.clone(),
            ops_url: settings.ingest_ops_url.clone(),
            timeout: Duration::from_millis(settings.ingest_timeout_ms),
            forwarded_for,
        }
    }

    /// Forwards one checked vote to `POST /wasm/votes`.
    pub async fn cast(&self, vote: &Value, vote_id: &VoteId) -> Result<Response<Body>, ErrorReply> {
        self.post("/wasm/votes", vote).await.map_err(|problem| {
            ErrorReply::unavailable(format!("{problem}; try again with this vote_id"))
                .with_details(json!({ "vote_id": vote_id.as_str() }))
        })
    }

    /// Forwards a checked batch to `POST /wasm/votes/batch`.
    pub async fn cast_all(&self, votes: &Value, vote_ids: &[VoteId]) -> Result<Response<Body>, ErrorReply> {
        self.post("/wasm/votes/batch", votes).await.map_err(|problem| {
            let failed: Vec<Value> = vote_ids
                .iter()
                .enumerate()
                .map(|(index, id)| json!({"index": index, "vote_id": id.as_str()}))
                .collect();
            ErrorReply::unavailable(format!(
                "{} of {} votes were not accepted: {problem}",
                vote_ids.len(),
                vote_ids.len()
            ))
            .with_details(json!({ "accepted": [], "failed": failed }))
        })
    }

    /// Asks the native side's `/readyz` on its ops port (which checks Kafka, at most once a
    /// second); `Err` says why it is not ready.
    pub async fn ready(&self) -> Result<(), String> {
        let url = format!("{}/readyz", self.ops_url);
        // About 1 in 50 of these bodiless requests fail at once with "connection reset" under
        // wasmtime 49 (never under strace, never from curl: a race in the runtime's client). The
        // check is idempotent, so a failed exchange is tried again after a pause, twice at most.
        let mut attempt = 0;
        let mut response = loop {
            attempt += 1;
            let mut client = Client::new();
            client.set_connect_timeout(CONNECT_TIMEOUT);
            client.set_first_byte_timeout(READY_TIMEOUT);
            let request = Request::get(&url)
                .header("content-length", "0")
                .body(Body::empty())
                .map_err(|e| format!("bad INGEST_OPS_URL {url:?}: {e}"))?;
            match client.send(request).await {
                Ok(response) => break response,
                Err(e) if attempt == 3 => return Err(format!("the native ingest at {url} did not answer: {e}")),
                Err(_) => {
                    wstd::task::sleep(RETRY_PAUSE.into()).await;
                }
            }
        };
        let body = response.body_mut().str_contents().await.unwrap_or_default().to_owned();
        if response.status() == StatusCode::OK {
            return Ok(());
        }
        let reason = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or(body);
        Err(format!("the native ingest is not ready ({}): {reason}", response.status().as_u16()))
    }

    /// Posts JSON and passes the native side's answer on when it is one of the answers of the vote
    /// routes; `Err` says why there is no such answer (the caller makes it a 503).
    async fn post(&self, path: &str, body: &Value) -> Result<Response<Body>, String> {
        let mut client = Client::new();
        client.set_connect_timeout(CONNECT_TIMEOUT);
        client.set_first_byte_timeout(self.timeout);
        client.set_between_bytes_timeout(self.timeout);
        let url = format!("{}{path}", self.url);
        let body = body.to_string();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("content-type", "application/json")
            .header("content-length", body.len());
        if let Some(forwarded_for) = &self.forwarded_for {
            request = request.header("x-forwarded-for", forwarded_for.clone());
        }
        let request = request.body(Body::from(body)).map_err(|e| format!("bad INGEST_URL {url:?}: {e}"))?;
        let mut response =
            client.send(request).await.map_err(|e| format!("the native ingest at {url} did not answer: {e}"))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let text = response
            .body_mut()
            .str_contents()
            .await
            .map_err(|e| format!("the native ingest at {url} broke off its answer: {e}"))?;
        let answer: Value = serde_json::from_str(text)
            .map_err(|_| format!("the native ingest at {url} answered {status} without a JSON body"))?;
        match status {
            // Accepted: Kafka acknowledged every vote.
            200 if answer["status"] == "accepted" => Ok(json_response(200, &answer)),
            // Its own refusals (the contest, limits, Kafka unavailable): the same bodies as ours.
            400 | 403 | 409 | 413 | 503 if answer["error"]["code"].is_string() => Ok(json_response(status, &answer)),
            // The client is over its rate: the same answer, with when to come back.
            429 if answer["error"]["code"].is_string() => {
                let mut refused = json_response(status, &answer);
                if let Some(retry_after) = retry_after {
                    refused.headers_mut().insert("retry-after", retry_after);
                }
                Ok(refused)
            }
            404 | 405 => {
                Err(format!("the native ingest at {url} does not serve the Wasm route (it needs INGEST_ROUTES=wasm)"))
            }
            _ => Err(format!("the native ingest at {url} answered {status} unexpectedly: {answer}")),
        }
    }
}
