//! Arbitrary bytes as gRPC request messages: `bandvote.v1.Vote` (`Votes/Cast`), a stream of
//! length-delimited `Vote`s (`Votes/CastBatch`) and the original `confproto.requestId`, each read
//! into a `BallotInput` the way the gRPC route does and validated.
//!
//! Properties: nothing panics; a decoded message re-encodes to one that decodes equal; an accepted
//! vote holds the domain's invariants and reads back as the same vote when sent on again.
#![no_main]

use bandvote_domain::{Ballot, ballot::BallotInput};
use bandvote_fuzz::check_resent;
use bandvote_proto::{confproto, v1};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn vote_input(vote: &v1::Vote) -> BallotInput {
    BallotInput::from_proto(&vote.name, &vote.album, &vote.year, &vote.rank, &vote.vote_id, &vote.voter_id)
}

fn validate(input: &BallotInput) {
    if let Ok(ballot) = Ballot::parse(input) {
        check_resent(&ballot);
    }
}

fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let again = M::decode(message.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&again, message, "protobuf round trip");
}

fuzz_target!(|data: &[u8]| {
    // Votes/Cast.
    if let Ok(vote) = v1::Vote::decode(data) {
        round_trips(&vote);
        validate(&vote_input(&vote));
    }

    // confproto.getInfo/returnInfo: the four original strings, no ids.
    if let Ok(request) = confproto::RequestId::decode(data) {
        round_trips(&request);
        validate(&BallotInput::from_proto(&request.name, &request.album, &request.year, &request.rank, "", ""));
    }

    // Votes/CastBatch: the stream's messages, each length-delimited, read until one does not decode.
    let mut rest = data;
    let mut votes = 0;
    while !rest.is_empty() && votes < 64 {
        let Ok(vote) = v1::Vote::decode_length_delimited(&mut rest) else { break };
        validate(&vote_input(&vote));
        votes += 1;
    }
});
