//! Where votes are kept: every Redis key and MongoDB name, defined once for writer and readers.
//!
//! Redis keys (with the default prefix `bandvote`), all written by the consumer in one atomic
//! script per batch, so they always agree with each other:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bandvote:votes:total` | string | votes counted |
//! | `bandvote:votes:band` | hash | band → votes |
//! | `bandvote:votes:album` | hash | `band / album` → votes |
//! | `bandvote:votes:route` | hash | route (`grpc`, `http`, `wasm`) → votes |
//! | `bandvote:leaderboard` | sorted set | band, scored by votes |
//! | `bandvote:votes:second` | hash | Unix second the vote was accepted → votes |
//! | `bandvote:votes:timeline` | stream | one entry per batch, field `votes` (capped) |
//! | `bandvote:rank:sum` | hash | `band / album` → sum of ranks |
//! | `bandvote:rank:avg` | hash | `band / album` → average rank |
//! | `bandvote:dead_letters` | string | records sent to the dead-letter topic |
//! | `bandvote:seen:<vote_id>` | string | marks a vote as counted (expires after the dedup window) |
//! | `bandvote:dead_letter_seen:<topic>:<partition>:<offset>` | string | marks a dead letter as counted (same expiry) |

/// The Redis keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub const DEFAULT_PREFIX: &'static str = "bandvote";

    pub fn new(prefix: impl Into<String>) -> Self {
        RedisKeys { prefix: prefix.into() }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn total(&self) -> String {
        self.key("votes:total")
    }
    pub fn by_band(&self) -> String {
        self.key("votes:band")
    }
    pub fn by_album(&self) -> String {
        self.key("votes:album")
    }
    pub fn by_route(&self) -> String {
        self.key("votes:route")
    }
    pub fn leaderboard(&self) -> String {
        self.key("leaderboard")
    }
    pub fn per_second(&self) -> String {
        self.key("votes:second")
    }
    pub fn timeline(&self) -> String {
        self.key("votes:timeline")
    }
    pub fn rank_sum(&self) -> String {
        self.key("rank:sum")
    }
    pub fn rank_avg(&self) -> String {
        self.key("rank:avg")
    }
    pub fn dead_letters(&self) -> String {
        self.key("dead_letters")
    }
    /// The prefix of the per-vote "already counted" markers; the vote id follows it.
    pub fn seen_prefix(&self) -> String {
        self.key("seen:")
    }
    /// The prefix of the per-record "dead letter already counted" markers; `topic:partition:offset`
    /// follows it. Apart from the vote markers, so that no vote id can pass for a dead letter.
    pub fn dead_letter_seen_prefix(&self) -> String {
        self.key("dead_letter_seen:")
    }

    /// The field that names an album in the album hashes.
    pub fn album_field(band: &str, album: &str) -> String {
        format!("{band} / {album}")
    }
}

impl Default for RedisKeys {
    fn default() -> Self {
        RedisKeys::new(Self::DEFAULT_PREFIX)
    }
}

/// The MongoDB vote log: one document per vote, `_id` = `vote_id`.
///
/// Fields: `name`, `album`, `year` (int), `rank` (double), `voter_id` (when sent), `route`,
/// `received_at` (date), `kafka.partition`, `kafka.offset`, `logged_at` (date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoNames {
    pub database: String,
    pub collection: String,
}

impl MongoNames {
    pub const DEFAULT_DATABASE: &'static str = "bandvote";
    pub const VOTES: &'static str = "votes";

    /// The indexes of the vote log: (name, keys in order, descending?). Newest first is
    /// `received_at` descending with `_id` as the tie-breaker; the filters lead with their field.
    pub const INDEXES: &'static [(&'static str, &'static [(&'static str, i32)])] = &[
        ("newest_first", &[("received_at", -1), ("_id", -1)]),
        ("band_newest_first", &[("name", 1), ("received_at", -1), ("_id", -1)]),
        ("album_newest_first", &[("name", 1), ("album", 1), ("received_at", -1), ("_id", -1)]),
        ("route_newest_first", &[("route", 1), ("received_at", -1), ("_id", -1)]),
    ];

    pub fn new(database: impl Into<String>) -> Self {
        MongoNames { database: database.into(), collection: Self::VOTES.to_owned() }
    }
}

impl Default for MongoNames {
    fn default() -> Self {
        MongoNames::new(Self::DEFAULT_DATABASE)
    }
}
