//! The bandvote domain: what a vote is, how it travels and where it is kept.
//!
//! * [`ballot`] turns untrusted input (JSON or protobuf strings) into a [`Ballot`], naming every
//!   field that is wrong and why. Past that point a vote is valid by construction.
//! * [`contest`] is the contest file: the roster, the voting window and the per-voter rule.
//! * [`roster`] is the optional list of contest bands and albums that rejects unknown candidates.
//! * [`event`] is the versioned Kafka event, the one format producer and consumer share.
//! * [`front`] is the contract of every vote front: the paths, the no-op header, new vote ids.
//! * [`names`] holds every Redis key and MongoDB name, shared by the writer and the readers.
//! * [`reply`] holds the JSON bodies of the HTTP vote routes, shared by the native and Wasm fronts.
//! * [`vote_log`] is what readers of the MongoDB vote log see: the logs API's JSON bodies.
//! * `log_document` (feature `bson`) is the vote log's document itself, written by the consumer
//!   and read by the audit, the logs API and the tests.
//!
//! The crate does no I/O and builds for `wasm32-unknown-unknown`.

pub mod ballot;
pub mod contest;
pub mod event;
pub mod front;
#[cfg(feature = "bson")]
pub mod log_document;
pub mod names;
pub mod reply;
pub mod roster;
pub mod vote_log;

pub use ballot::{Ballot, FieldError, Input, InvalidVote, Rank, VoteId, Year};
pub use contest::{Contest, ContestError, Refused, VoterRule, Window};
pub use event::{DecodeError, Route, VoteEvent};
#[cfg(feature = "bson")]
pub use log_document::LogDocument;
pub use names::{MongoNames, RedisKeys, ResendWindow};
pub use roster::{Roster, RosterError};
pub use vote_log::{
    AlbumTally, BandTally, CertifiedResult, KafkaPosition, LogId, LogTallies, LoggedVote, RouteTally, VotePage,
    VoteStatus,
};
