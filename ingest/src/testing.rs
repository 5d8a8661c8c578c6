//! What the unit tests of the routes share: a caster that publishes to memory, a request and a
//! vote to send, and the vote counters the routes increment.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    http::{Request, header},
};
use bandvote_domain::{Contest, VoteEvent};
use metrics_util::debugging::{DebugValue, Snapshotter};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{cast::Caster, publisher::Publisher};

/// The votes the in-memory publisher took, in the order it took them.
pub type Published = Arc<Mutex<Vec<VoteEvent>>>;

/// A caster for `contest` whose publisher acknowledges every vote at once and keeps it.
pub fn caster(contest: Contest) -> (Caster, Published) {
    let (publisher, published) = Publisher::in_memory();
    (Caster::new(publisher, Arc::new(contest), false), published)
}

/// POSTs `body` to `path`; the status and the JSON answer.
pub async fn post(router: &Router, path: &str, body: impl Into<Body>) -> (u16, Value) {
    let request = Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into());
    let reply = router.clone().oneshot(request.expect("a request")).await.expect("an answer");
    let status = reply.status().as_u16();
    let body = axum::body::to_bytes(reply.into_body(), usize::MAX).await.expect("a body");
    (status, serde_json::from_slice(&body).expect("a JSON answer"))
}

/// A good vote for `band`.
pub fn vote(band: &str) -> Value {
    json!({"name": band, "album": "Album", "year": "1997", "rank": "1"})
}

/// A contest whose voting closed in 2020.
pub fn closed_contest() -> Contest {
    Contest::from_json(r#"{"voting": {"closes": "2020-01-01T00:00:00Z"}}"#).expect("a contest")
}

/// The value of every `bandvote_ingest_votes_{accepted,rejected}_total` counter, keyed by its
/// name and labels (`bandvote_ingest_votes_rejected_total route=http,reason=invalid`).
pub fn vote_counters(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let DebugValue::Counter(count) = value else { return None };
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            key.name()
                .starts_with("bandvote_ingest_votes_")
                .then(|| (format!("{} {}", key.name(), labels.join(",")), count))
        })
        .collect()
}
