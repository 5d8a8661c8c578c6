//! What readers of the vote log see: the JSON bodies of the logs API, shared by the API that writes
//! them and the web console that reads them (on the server and in the browser).

use serde::{Deserialize, Serialize};

use crate::Route;

/// One logged vote, as the logs API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedVote {
    pub vote_id: String,
    /// The band (the original message's `name`).
    pub name: String,
    pub album: String,
    pub year: i32,
    pub rank: f64,
    pub route: Route,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter_id: Option<String>,
    /// When ingest accepted the vote, RFC 3339 in UTC with milliseconds.
    pub received_at: String,
    /// Where the vote sits in Kafka.
    pub kafka: KafkaPosition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPosition {
    pub partition: i32,
    pub offset: i64,
}

/// A page of the log, newest first. `next_cursor` fetches the next (older) page; it is absent on
/// the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VotePage {
    pub votes: Vec<LoggedVote>,
    pub next_cursor: Option<String>,
}

/// The tallies of the logged votes, computed from the log itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogTallies {
    pub total: u64,
    /// Bands, most votes first.
    pub bands: Vec<BandTally>,
    /// Albums, most votes first.
    pub albums: Vec<AlbumTally>,
    /// Routes, most votes first.
    pub routes: Vec<RouteTally>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandTally {
    pub name: String,
    pub votes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlbumTally {
    pub name: String,
    pub album: String,
    pub votes: u64,
    /// The mean of the album's ranks.
    pub rank_avg: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTally {
    pub route: Route,
    pub votes: u64,
}
