//! The vote log's document: the one description of what the consumer writes to MongoDB and what
//! the audit, the certified result, the logs API and the tests read back ([`MongoNames`] has the
//! collection and its indexes). Built with the `bson` feature, by the crates that talk to MongoDB
//! only: the rest of the domain stays free of it (and of I/O).
//!
//! [`MongoNames`]: crate::MongoNames

use bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::{
    Ballot, KafkaPosition, LoggedVote, Refused, Route, VoteEvent, VoteId, VoteStatus,
    ballot::{BallotInput, Input},
};

/// One vote as the log keeps it: `_id` is its log id, unique, so a vote is logged at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogDocument {
    /// The vote's [log id](VoteEvent::log_id); for a vote refused as a `vote_id_conflict`, that
    /// id, `~` and the content's fingerprint (another vote than the one the id stands for).
    #[serde(rename = "_id")]
    pub id: String,
    /// Absent in documents written before log ids were scoped by the voter: the `_id` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_id: Option<String>,
    /// The band.
    pub name: String,
    pub album: String,
    pub year: i32,
    pub rank: f64,
    pub route: Route,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter_id: Option<String>,
    /// When ingest accepted the vote.
    pub received_at: DateTime,
    /// The Kafka record it was read from.
    pub kafka: KafkaPosition,
    /// Absent in documents written before votes could be refused: counted.
    #[serde(default)]
    pub status: VoteStatus,
    /// Why a refused vote was refused ([`Refused::code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the consumer wrote it (the same for a whole batch); absent in older documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged_at: Option<DateTime>,
}

impl LogDocument {
    /// The document of `event`, read from `kafka`, refused or not, under `id`, written at
    /// `logged_at`.
    pub fn new(
        id: String,
        event: &VoteEvent,
        kafka: KafkaPosition,
        refused: Option<Refused>,
        logged_at: DateTime,
    ) -> Self {
        let ballot = &event.ballot;
        LogDocument {
            id,
            vote_id: Some(event.vote_id.as_str().to_owned()),
            name: ballot.band.clone(),
            album: ballot.album.clone(),
            year: ballot.year.get(),
            rank: ballot.rank.get(),
            route: event.route,
            voter_id: ballot.voter_id.clone(),
            received_at: DateTime::from_millis(event.received_at_ms),
            kafka,
            status: if refused.is_some() { VoteStatus::Refused } else { VoteStatus::Counted },
            reason: refused.map(|reason| reason.code().to_owned()),
            logged_at: Some(logged_at),
        }
    }

    /// The vote event it was written from, with the same checks as a request's: a document that
    /// would not have been accepted says which field is wrong.
    pub fn event(&self) -> Result<VoteEvent, String> {
        let text = |value: &str| Input::Text(value.to_owned());
        let input = BallotInput {
            name: text(&self.name),
            album: text(&self.album),
            year: Input::Number(self.year.into()),
            rank: serde_json::Number::from_f64(self.rank).map_or(Input::Other("not a number"), Input::Number),
            vote_id: Input::Missing,
            voter_id: self.voter_id.as_deref().map_or(Input::Missing, text),
        };
        let ballot = Ballot::parse(&input).map_err(|e| e.to_string())?;
        let vote_id = match &self.vote_id {
            Some(id) => VoteId::parse(id).map_err(|e| format!("vote_id: {e}"))?,
            None => VoteId::parse(&self.id).map_err(|e| format!("_id: {e}"))?,
        };
        Ok(VoteEvent { vote_id, ballot, route: self.route, received_at_ms: self.received_at.timestamp_millis() })
    }

    /// Why the vote was refused, if it was; a refused vote without a known reason is an error.
    pub fn refused(&self) -> Result<Option<Refused>, String> {
        match (self.status, self.reason.as_deref()) {
            (VoteStatus::Counted, _) => Ok(None),
            (VoteStatus::Refused, Some(reason)) => {
                Refused::from_code(reason).map(Some).ok_or_else(|| format!("reason {reason:?} is not a refusal"))
            }
            (VoteStatus::Refused, None) => Err("a refused vote has no reason".to_owned()),
        }
    }

    /// The vote as the logs API shows it.
    pub fn into_view(self) -> LoggedVote {
        LoggedVote {
            received_at: rfc3339_millis(self.received_at),
            vote_id: self.vote_id.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            name: self.name,
            album: self.album,
            year: self.year,
            rank: self.rank,
            route: self.route,
            voter_id: self.voter_id,
            kafka: self.kafka,
            status: self.status,
            reason: self.reason,
        }
    }
}

/// A time as RFC 3339 in UTC with milliseconds, as the logs API writes every time (bson writes
/// whole seconds without a fraction; the console and the cursor want milliseconds).
pub fn rfc3339_millis(at: DateTime) -> String {
    let millis = at.timestamp_millis().rem_euclid(1000);
    let seconds = DateTime::from_millis(at.timestamp_millis() - millis);
    let text = seconds.try_to_rfc3339_string().unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    format!("{}.{millis:03}Z", text.trim_end_matches('Z'))
}
