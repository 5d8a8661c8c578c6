//! Casting votes: the one path every route takes from untrusted input to an acknowledged vote.
//!
//! `check` turns input into a [`Ballot`] (validation, then the contest's roster and voter rule);
//! `cast` and `cast_all` give each ballot its id and acceptance time, refuse it outside the
//! contest's voting window, and publish it. Every route calls these, so a vote is held to the same
//! rules whichever way it came in.

use std::{sync::Arc, time::SystemTime};

use bandvote_domain::{
    Ballot, Contest, InvalidVote, Refused, Route, VoteEvent, VoteId, Window, ballot::BallotInput, front::new_vote_id,
    reply::ErrorCode,
};

use crate::{
    publisher::{PublishError, Publisher},
    standing::{Standing, Standings},
};

/// Why a vote was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error("{0}")]
    Invalid(#[from] InvalidVote),
    /// Accepted outside the contest's voting window: never published.
    #[error("{}", window.describe())]
    Closed { window: Window },
    /// Refused by the contest's rule, or a `vote_id` used before for another vote: never published.
    #[error("{}", refusal_message(*reason, rule))]
    Refused { reason: Refused, rule: String },
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
    /// Nothing was published: the batch (of `total` votes) arrived outside the contest's voting
    /// window.
    #[error("{}", window.describe())]
    Closed { total: usize, window: Window },
    /// Nothing was published: these votes (by index) are refused by the contest's rule or reuse a
    /// `vote_id`.
    #[error("{} of {} votes are refused ({rule}); nothing was accepted", refused.len(), total)]
    Refused { total: usize, refused: Vec<(usize, Refused)>, rule: String },
    /// Some votes were published and some were not. Every vote has its id, so re-sending the
    /// failed ones with those ids cannot count any vote twice.
    #[error("{} of {} votes were not accepted: {cause}", failed.len(), failed.len() + accepted.len())]
    Partial { accepted: Vec<VoteId>, failed: Vec<(usize, VoteId)>, cause: PublishError },
}

impl CastError {
    /// The code of the answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            CastError::Invalid(_) => ErrorCode::InvalidVote,
            CastError::Closed { .. } => ErrorCode::Refused(Refused::VotingClosed),
            CastError::Refused { reason, .. } => ErrorCode::Refused(*reason),
            CastError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

impl BatchError {
    /// The code of the answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            BatchError::Invalid { .. } => ErrorCode::InvalidVote,
            BatchError::Closed { .. } => ErrorCode::Refused(Refused::VotingClosed),
            BatchError::Refused { refused, .. } => {
                ErrorCode::BatchRefused { all_closed: refused.iter().all(|(_, r)| *r == Refused::VotingClosed) }
            }
            BatchError::Partial { .. } => ErrorCode::Unavailable,
        }
    }

    /// How many votes of the batch this answer turns away: the invalid ones (the batch is refused
    /// for them), the whole batch when the window or the contest's rule refuses it, the ones
    /// Kafka did not take in a partial batch.
    pub fn votes_turned_away(&self) -> usize {
        match self {
            BatchError::Invalid { invalid, .. } => invalid.len(),
            BatchError::Closed { total, .. } | BatchError::Refused { total, .. } => *total,
            BatchError::Partial { failed, .. } => failed.len(),
        }
    }
}

/// Where a cast vote goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Kafka,
    /// Nowhere: see [`NOOP_HEADER`](bandvote_domain::front::NOOP_HEADER).
    NoOp,
}

#[derive(Clone)]
pub struct Caster {
    publisher: Publisher,
    contest: Arc<Contest>,
    standings: Option<Standings>,
    noop_allowed: bool,
}

impl Caster {
    /// Casts votes for `contest` (the default contest is open to anyone, at any time).
    pub fn new(publisher: Publisher, contest: Arc<Contest>, noop_allowed: bool) -> Self {
        Caster { publisher, contest, standings: None, noop_allowed }
    }

    /// The same caster, answering from what the counting step knows (see [`crate::standing`]).
    pub fn with_standings(mut self, standings: Standings) -> Self {
        self.standings = Some(standings);
        self
    }

    pub fn contest(&self) -> &Contest {
        &self.contest
    }

    /// The delivery for a request that did (or did not) send
    /// [`NOOP_HEADER`](bandvote_domain::front::NOOP_HEADER).
    pub fn delivery(&self, noop_asked: bool) -> Delivery {
        if noop_asked && self.noop_allowed { Delivery::NoOp } else { Delivery::Kafka }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Validates one vote and checks it against the contest's roster and voter rule.
    pub fn check(&self, input: &BallotInput) -> Result<Ballot, InvalidVote> {
        Ballot::parse(input).and_then(|ballot| {
            self.contest.check_fields(&ballot).map(|()| ballot).map_err(|e| InvalidVote { errors: vec![e] })
        })
    }

    /// Publishes one checked vote; returns its id once Kafka acknowledged it.
    pub async fn cast(&self, route: Route, ballot: Ballot, delivery: Delivery) -> Result<VoteId, CastError> {
        let fresh = ballot.vote_id.is_none();
        let event = stamp(route, ballot, now_ms());
        if !self.contest.window.contains(event.received_at_ms) {
            return Err(CastError::Closed { window: self.contest.window.clone() });
        }
        match self.standing(std::slice::from_ref(&event), &[fresh]).await.and_then(|s| s.first().copied()) {
            Some(Standing::Counted) => return Ok(event.vote_id),
            Some(Standing::Refused(reason)) => {
                return Err(CastError::Refused { reason, rule: self.contest.voters.describe() });
            }
            Some(Standing::New) | None => {}
        }
        if delivery == Delivery::NoOp {
            std::hint::black_box(event.encode());
            return Ok(event.vote_id);
        }
        match self.publisher.publish(&event).await {
            Ok(()) => {
                accepted(route, 1);
                Ok(event.vote_id)
            }
            Err(error) => Err(CastError::Unavailable { vote_id: event.vote_id, error }),
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
            match self.check(input) {
                Ok(ballot) => ballots.push(ballot),
                Err(err) => invalid.push((index, err)),
            }
        }
        if !invalid.is_empty() {
            return Err(BatchError::Invalid { total: inputs.len(), invalid });
        }
        // One acceptance time for the whole batch: it is in the window, or none of it is.
        let now = now_ms();
        if !self.contest.window.contains(now) {
            return Err(BatchError::Closed { total: ballots.len(), window: self.contest.window.clone() });
        }
        let fresh: Vec<bool> = ballots.iter().map(|ballot| ballot.vote_id.is_none()).collect();
        let events: Vec<VoteEvent> = ballots.into_iter().map(|ballot| stamp(route, ballot, now)).collect();
        let standings = self.standing(&events, &fresh).await.unwrap_or_default();
        let refused: Vec<(usize, Refused)> = standings
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                Standing::Refused(reason) => Some((index, *reason)),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            return Err(BatchError::Refused { total: events.len(), refused, rule: self.contest.voters.describe() });
        }
        // Votes counted before are accepted already; the others are published.
        let counted: Vec<bool> = (0..events.len()).map(|i| standings.get(i) == Some(&Standing::Counted)).collect();
        if delivery == Delivery::NoOp {
            for event in &events {
                std::hint::black_box(event.encode());
            }
            return Ok(events.into_iter().map(|event| event.vote_id).collect());
        }
        // Usually none was counted before, and the batch is published as it is.
        let published = if counted.contains(&true) {
            let to_publish: Vec<VoteEvent> =
                events.iter().zip(&counted).filter(|(_, counted)| !**counted).map(|(e, _)| e.clone()).collect();
            self.publisher.publish_all(&to_publish).await
        } else {
            self.publisher.publish_all(&events).await
        };
        let mut published = published.into_iter();
        let results: Vec<Result<(), PublishError>> =
            counted.iter().map(|&counted| if counted { Ok(()) } else { published.next().unwrap_or(Ok(())) }).collect();
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
            Some(cause) => Err(BatchError::Partial { accepted: accepted_ids, failed, cause }),
        }
    }
}

impl Caster {
    /// What the counting step knows of these votes, when ingest can ask (see [`crate::standing`]).
    async fn standing(&self, events: &[VoteEvent], fresh: &[bool]) -> Option<Vec<Standing>> {
        self.standings.as_ref()?.of(events, fresh).await
    }
}

/// The words of a refusal: what was refused, and the rule.
pub fn refusal_message(reason: Refused, rule: &str) -> String {
    match reason {
        Refused::LimitReached => format!("this voter has used every vote of the contest ({rule})"),
        Refused::BandLimitReached => {
            format!("this voter has used every vote the contest allows for this band ({rule})")
        }
        Refused::VoteIdConflict => {
            "this vote_id was used before for a different vote; send a new vote with a new vote_id".to_owned()
        }
        Refused::VotingClosed => "the vote arrived outside the voting window".to_owned(),
    }
}

/// Gives a ballot its id (the client's, or a new time-ordered one) and its acceptance time.
fn stamp(route: Route, mut ballot: Ballot, received_at_ms: i64) -> VoteEvent {
    let vote_id = ballot.vote_id.take().unwrap_or_else(new_vote_id);
    ballot.vote_id = Some(vote_id.clone());
    VoteEvent { vote_id, ballot, route, received_at_ms }
}

/// This process's clock, in milliseconds since the Unix epoch: a vote's acceptance time.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn accepted(route: Route, votes: usize) {
    metrics::counter!("bandvote_ingest_votes_accepted_total", "route" => route.as_str()).increment(votes as u64);
}
