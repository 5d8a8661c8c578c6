//! Arbitrary bytes as a Kafka record's payload, read by the consumer's decoder
//! (`VoteEvent::decode`), and the same bytes as a JSON vote that ingest stamps and encodes.
//!
//! Properties: nothing panics; a payload that decodes holds a valid vote whose id is the event's,
//! and encoding it then decoding again gives an equal event with the same bytes; any vote ingest
//! accepts decodes from its encoding to an equal event.
#![no_main]

use bandvote_domain::{Ballot, Route, VoteEvent, VoteId, reply};
use bandvote_fuzz::check_ballot;
use libfuzzer_sys::fuzz_target;

fn check_round_trip(event: &VoteEvent) {
    check_ballot(&event.ballot);
    assert_eq!(event.ballot.vote_id.as_ref(), Some(&event.vote_id), "the ballot carries the event's id");
    let bytes = event.encode();
    let again = VoteEvent::decode(Some(&bytes)).unwrap_or_else(|err| panic!("an encoded event decodes: {err}"));
    assert_eq!(&again, event, "encode then decode gives an equal event");
    assert_eq!(again.encode(), bytes, "an event encodes to the same bytes every time");
}

fuzz_target!(|data: &[u8]| {
    // The consumer: a record's payload.
    if let Ok(event) = VoteEvent::decode(Some(data)) {
        check_round_trip(&event);
    }

    // Ingest: a vote from a JSON body, stamped with its id, route and time as `cast` does.
    let Ok(value) = reply::parse_json(data) else { return };
    let Ok(mut ballot) = Ballot::from_json(&value) else { return };
    let vote_id =
        ballot.vote_id.take().unwrap_or_else(|| VoteId::parse("0192f1d2-0000-7000-8000-000000000000").expect("id"));
    ballot.vote_id = Some(vote_id.clone());
    let seed = data.iter().fold(0i64, |acc, &b| acc.wrapping_mul(31).wrapping_add(i64::from(b)));
    let route = Route::ALL[seed.rem_euclid(3) as usize];
    check_round_trip(&VoteEvent { vote_id, ballot, route, received_at_ms: seed });
});
