//! Arbitrary bytes as the body of the HTTP vote routes: `POST /votes` (one JSON object) and
//! `POST /votes/batch` (an array, or `{"votes": [...]}`), up to but excluding publishing.
//!
//! Properties: nothing panics; a body reads as the same vote (or the same error) straight into
//! its fields as through a JSON tree; an accepted vote holds the domain's invariants and reads
//! back as the same vote when a front sends it on (as protobuf strings or as JSON).
#![no_main]

use bandvote_domain::{Ballot, ballot::BallotInput, reply};
use bandvote_fuzz::check_resent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    // POST /votes: read the object's fields, then validate.
    let vote = reply::read_vote(body);
    assert_eq!(vote, reply::parse_json(body).map(BallotInput::from_value), "the reader and the tree differ");
    if let Ok(Ok(input)) = vote
        && let Ok(ballot) = Ballot::parse(&input)
    {
        check_resent(&ballot);
    }

    // POST /votes/batch: every vote is read and checked; the batch is accepted only if all are.
    if let Ok(votes) = reply::read_batch(body) {
        assert!(!votes.is_empty(), "a batch is never empty");
        for vote in &votes {
            match vote {
                Ok(input) => {
                    if let Ok(ballot) = Ballot::parse(input) {
                        check_resent(&ballot);
                    }
                }
                Err(invalid) => {
                    assert_eq!(invalid.errors.len(), 1, "only a non-object is refused before validation");
                    let _ = reply::ErrorReply::invalid_batch(votes.len(), &[(0, invalid.clone())]).body();
                }
            }
        }
    }
});
