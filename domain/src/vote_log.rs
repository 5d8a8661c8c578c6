//! What readers of the vote log see: the JSON bodies of the logs API, shared by the API that writes
//! them and the web console that reads them (on the server and in the browser).

use serde::{Deserialize, Serialize};

use crate::Route;

/// A vote's identity in the log: `<vote_id>`, or `<voter_id>/<vote_id>` for a vote that names its
/// voter (two voters may choose the same vote id), followed by `~<16 hex digits>` for a vote
/// refused as a `vote_id_conflict` (another vote under an id used before). The MongoDB `_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LogId(String);

impl LogId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ids, conflict) = match text.split_once('~') {
            Some((ids, fingerprint)) => (ids, Some(fingerprint)),
            None => (text, None),
        };
        if let Some(fingerprint) = conflict
            && (fingerprint.len() != 16 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("a conflict's id ends in ~ and 16 hexadecimal digits".to_owned());
        }
        let (voter, vote) = match ids.split_once('/') {
            Some((voter, vote)) => (Some(voter), vote),
            None => (None, ids),
        };
        for part in voter.into_iter().chain([vote]) {
            crate::VoteId::parse(part).map_err(|problem| format!("is <vote_id> or <voter_id>/<vote_id>: {problem}"))?;
        }
        Ok(LogId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a logged vote was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteStatus {
    #[default]
    Counted,
    Refused,
}

impl VoteStatus {
    /// As the log stores it (and serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            VoteStatus::Counted => "counted",
            VoteStatus::Refused => "refused",
        }
    }
}

/// One logged vote, as the logs API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedVote {
    /// The vote's identity in the log ([`LogId`]).
    pub id: String,
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
    /// `counted`, or `refused` when the contest's rule refused it when it was counted.
    #[serde(default)]
    pub status: VoteStatus,
    /// Why it was refused (`limit_reached`, `band_limit_reached`, `vote_id_conflict`,
    /// `voting_closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// When the computation these tallies come from started (RFC 3339, UTC, milliseconds): every
    /// vote logged before then is counted. The logs API always gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
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

/// The contest's certified result, computed from the log by `bandvote-result` and served by the
/// logs API (`GET /result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertifiedResult {
    /// The contest's name, from its file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contest: Option<String>,
    /// `closed` once the voting window has closed (final), `open` before (provisional).
    pub status: String,
    pub window: ResultWindow,
    /// The per-voter rule, in words.
    pub rule: String,
    /// Votes counted, and refused.
    pub counted: u64,
    pub refused: u64,
    /// Refusal code → votes.
    pub refused_by_reason: std::collections::BTreeMap<String, u64>,
    /// Bands, most votes first.
    pub bands: Vec<ResultBand>,
    /// Albums, most votes first.
    pub albums: Vec<ResultAlbum>,
    /// Documents in the log (counted and refused votes).
    pub documents: u64,
    /// `sha256:<hex>` over the log (see `consumer/src/result.rs` for the exact lines).
    pub digest: String,
    /// Whether the live Redis tallies equal the result.
    pub redis_agrees: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_differences: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResultWindow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBand {
    pub name: String,
    pub votes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultAlbum {
    pub name: String,
    pub album: String,
    pub votes: u64,
    pub rank_avg: f64,
}

#[cfg(test)]
mod tests {
    use super::{LogId, VoteStatus};

    #[test]
    fn a_status_is_written_as_serde_writes_it() {
        for status in [VoteStatus::Counted, VoteStatus::Refused] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn log_ids_are_a_vote_id_a_voter_and_a_vote_id_or_a_conflict() {
        for good in ["v-1", "phone:502/v-1", "phone:502/v-1~0123456789abcdef"] {
            assert_eq!(LogId::parse(good).expect(good).as_str(), good);
        }
        for bad in ["", "a/b/c", "a/", "/b", "v~12", "v~0123456789abcdeg", "a b"] {
            assert!(LogId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
