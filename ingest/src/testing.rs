//! What the unit tests of the routes share: a caster that publishes to memory, and the vote
//! counters the routes increment.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use bandvote_domain::{Contest, VoteEvent};
use metrics_util::debugging::{DebugValue, Snapshotter};

use crate::{cast::Caster, publisher::Publisher};

/// The votes the in-memory publisher took, in the order it took them.
pub type Published = Arc<Mutex<Vec<VoteEvent>>>;

/// A caster for `contest` whose publisher acknowledges every vote at once and keeps it.
pub fn caster(contest: Contest) -> (Caster, Published) {
    let (publisher, published) = Publisher::in_memory();
    (Caster::new(publisher, Arc::new(contest), false), published)
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
