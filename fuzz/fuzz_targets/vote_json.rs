//! Arbitrary bytes as the body of the HTTP vote routes: `POST /votes` (one JSON object) and
//! `POST /votes/batch` (an array, or `{"votes": [...]}`), up to but excluding publishing.
//!
//! Properties: nothing panics; an accepted vote holds the domain's invariants and reads back as
//! the same vote when a front sends it on (as protobuf strings or as JSON).
#![no_main]

use bandvote_domain::{Ballot, ballot::BallotInput, reply};
use bandvote_fuzz::check_resent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(value) = reply::parse_json(body) else { return };

    // POST /votes: read the object's fields, then validate.
    if let Ok(input) = BallotInput::from_json(&value)
        && let Ok(ballot) = Ballot::parse(&input)
    {
        check_resent(&ballot);
    }

    // POST /votes/batch: every vote is read and checked; the batch is accepted only if all are.
    if let Ok(votes) = reply::batch_votes(value, usize::MAX) {
        assert!(!votes.is_empty(), "a batch is never empty");
        for vote in &votes {
            match BallotInput::from_json(vote) {
                Ok(input) => {
                    if let Ok(ballot) = Ballot::parse(&input) {
                        check_resent(&ballot);
                    }
                }
                Err(invalid) => {
                    assert!(!vote.is_object(), "only a non-object is refused before validation");
                    assert_eq!(invalid.errors.len(), 1);
                    let _ = reply::ErrorReply::invalid_batch(votes.len(), &[(0, invalid)]).body();
                }
            }
        }
    }
});
