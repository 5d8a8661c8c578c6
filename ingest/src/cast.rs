//! Casting votes: the one path every route takes from untrusted input to an acknowledged vote.
//!
//! `check` turns input into a [`Ballot`] (validation, then the roster when one is configured);
//! `cast` and `cast_all` give each ballot its id and publish it. Both routes call these, so a vote
//! is held to the same rules whichever way it came in.

use std::{sync::Arc, time::SystemTime};

use bandvote_domain::{Ballot, InvalidVote, Roster, Route, VoteEvent, VoteId, ballot::BallotInput};

use crate::publisher::{PublishError, Publisher};

/// Why a vote was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error("{0}")]
    Invalid(#[from] InvalidVote),
    /// Not accepted; the vote may still reach Kafka late, so a client that re-sends it should
    /// send this `vote_id` with it to have it counted once.
    #[error("{error}")]
    Unavailable { vote_id: VoteId, error: PublishError },
}

/// Why a batch was not accepted whole.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Nothing was published: these votes (by index) are invalid.
    #[error("{}", bandvote_domain::reply::invalid_batch_message(*total, invalid.len()))]
    Invalid { total: usize, invalid: Vec<(usize, InvalidVote)> },
    /// Some votes were published and some were not. Every vote has its id, so re-sending the
    /// failed ones with those ids cannot count any vote twice.
    #[error("{} of {} votes were not accepted: {cause}", failed.len(), failed.len() + accepted.len())]
    Partial { accepted: Vec<VoteId>, failed: Vec<(usize, VoteId)>, cause: PublishError },
}

/// The request header (gRPC metadata) that asks for a no-op cast, honoured only when the process
/// runs with `NOOP_ROUTES=true`: the vote is checked, stamped and encoded as usual, then answered
/// as accepted without going to Kafka. Benchmarks compare each route with its no-op self.
pub const NOOP_HEADER: &str = "x-bandvote-noop";

/// Where a cast vote goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Kafka,
    /// Nowhere: see [`NOOP_HEADER`].
    NoOp,
}

#[derive(Clone)]
pub struct Caster {
    publisher: Publisher,
    roster: Option<Arc<Roster>>,
    noop_allowed: bool,
}

impl Caster {
    pub fn new(publisher: Publisher, roster: Option<Roster>, noop_allowed: bool) -> Self {
        Caster { publisher, roster: roster.map(Arc::new), noop_allowed }
    }

    /// The delivery for a request that did (or did not) send [`NOOP_HEADER`].
    pub fn delivery(&self, noop_asked: bool) -> Delivery {
        if noop_asked && self.noop_allowed { Delivery::NoOp } else { Delivery::Kafka }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Validates one vote and checks it against the roster.
    pub fn check(&self, route: Route, input: &BallotInput) -> Result<Ballot, InvalidVote> {
        let checked = Ballot::parse(input).and_then(|ballot| match &self.roster {
            Some(roster) => roster.check(&ballot).map(|()| ballot).map_err(|e| InvalidVote { errors: vec![e] }),
            None => Ok(ballot),
        });
        if checked.is_err() {
            rejected(route, "invalid", 1);
        }
        checked
    }

    /// Publishes one checked vote; returns its id once Kafka acknowledged it.
    pub async fn cast(&self, route: Route, ballot: Ballot, delivery: Delivery) -> Result<VoteId, CastError> {
        let event = stamp(route, ballot);
        if delivery == Delivery::NoOp {
            std::hint::black_box(event.encode());
            return Ok(event.vote_id);
        }
        match self.publisher.publish(&event).await {
            Ok(()) => {
                accepted(route, 1);
                Ok(event.vote_id)
            }
            Err(error) => {
                rejected(route, "unavailable", 1);
                Err(CastError::Unavailable { vote_id: event.vote_id, error })
            }
        }
    }

    /// Checks every vote first; publishes them only if all are valid.
    pub async fn cast_all(
        &self,
        route: Route,
        inputs: &[BallotInput],
        delivery: Delivery,
    ) -> Result<Vec<VoteId>, BatchError> {
        let mut ballots = Vec::with_capacity(inputs.len());
        let mut invalid = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            match self.check(route, input) {
                Ok(ballot) => ballots.push(ballot),
                Err(err) => invalid.push((index, err)),
            }
        }
        if !invalid.is_empty() {
            return Err(BatchError::Invalid { total: inputs.len(), invalid });
        }
        let events: Vec<VoteEvent> = ballots.into_iter().map(|ballot| stamp(route, ballot)).collect();
        if delivery == Delivery::NoOp {
            for event in &events {
                std::hint::black_box(event.encode());
            }
            return Ok(events.into_iter().map(|event| event.vote_id).collect());
        }
        let results = self.publisher.publish_all(&events).await;
        let mut accepted_ids = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        let mut cause = None;
        for (index, (event, result)) in events.into_iter().zip(results).enumerate() {
            match result {
                Ok(()) => accepted_ids.push(event.vote_id),
                Err(err) => {
                    failed.push((index, event.vote_id));
                    cause.get_or_insert(err);
                }
            }
        }
        accepted(route, accepted_ids.len());
        match cause {
            None => Ok(accepted_ids),
            Some(cause) => {
                rejected(route, "unavailable", failed.len());
                Err(BatchError::Partial { accepted: accepted_ids, failed, cause })
            }
        }
    }
}

/// A new time-ordered vote id (UUIDv7), for a vote whose client sent none.
pub fn new_vote_id() -> VoteId {
    VoteId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid vote id")
}

/// Gives a ballot its id (the client's, or a new time-ordered one) and its acceptance time.
fn stamp(route: Route, mut ballot: Ballot) -> VoteEvent {
    let vote_id = ballot.vote_id.take().unwrap_or_else(new_vote_id);
    ballot.vote_id = Some(vote_id.clone());
    let received_at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    VoteEvent { vote_id, ballot, route, received_at_ms }
}

fn accepted(route: Route, votes: usize) {
    metrics::counter!("bandvote_ingest_votes_accepted_total", "route" => route.as_str()).increment(votes as u64);
}

/// Counts refused votes by route and reason (`invalid`, `malformed`, `too_large`, `unavailable`).
pub fn rejected(route: Route, reason: &'static str, votes: usize) {
    metrics::counter!("bandvote_ingest_votes_rejected_total", "route" => route.as_str(), "reason" => reason)
        .increment(votes as u64);
}
