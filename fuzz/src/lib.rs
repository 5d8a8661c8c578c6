//! Checks shared by the fuzz targets: what every accepted [`Ballot`] must satisfy, and the ways a
//! checked vote is sent on again by the fronts, which must read back as the same vote.

use bandvote_domain::{
    Ballot, VoteId,
    ballot::{BallotInput, MAX_NAME_CHARS, RANKS, YEARS},
};
use unicode_normalization::is_nfc;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

/// Asserts the invariants of a vote that passed validation.
pub fn check_ballot(ballot: &Ballot) {
    for name in [&ballot.band, &ballot.album] {
        assert_eq!(name.trim(), name.as_str(), "names are trimmed: {name:?}");
        assert!(!name.is_empty(), "names are not empty");
        assert!(name.chars().count() <= MAX_NAME_CHARS, "names are short: {name:?}");
        assert!(!name.chars().any(char::is_control), "names hold no control characters: {name:?}");
        assert!(is_nfc(name), "names are in Unicode NFC: {name:?}");
        assert!(
            !name.chars().any(|c| c.general_category() == GeneralCategory::Format),
            "names hold no format characters: {name:?}"
        );
    }
    assert!(YEARS.contains(&ballot.year.get()), "year in range: {:?}", ballot.year);
    let rank = ballot.rank.get();
    assert!(rank.is_finite() && RANKS.contains(&rank), "rank in range: {rank:?}");
    if let Some(vote_id) = &ballot.vote_id {
        assert_eq!(VoteId::parse(vote_id.as_str()).as_ref(), Ok(vote_id), "vote ids are valid");
    }
    if let Some(voter_id) = &ballot.voter_id {
        assert!(VoteId::parse(voter_id).is_ok(), "voter ids follow the id rules: {voter_id:?}");
    }
}

/// The vote as the gRPC route's HTTP front (`/grpc/insert`) re-sends it: the original four strings,
/// with `year` and `rank` printed by `to_string`, then read by the gRPC route.
pub fn resent_as_proto(ballot: &Ballot) -> BallotInput {
    BallotInput::from_proto(
        &ballot.band,
        &ballot.album,
        &ballot.year.get().to_string(),
        &ballot.rank.get().to_string(),
        ballot.vote_id.as_ref().map_or("", VoteId::as_str),
        ballot.voter_id.as_deref().unwrap_or(""),
    )
}

/// The vote as the Wasm front forwards it: a JSON body with `year` and `rank` as numbers, read by
/// the native HTTP route.
pub fn resent_as_json(ballot: &Ballot) -> serde_json::Value {
    let body = serde_json::json!({
        "name": ballot.band,
        "album": ballot.album,
        "year": ballot.year.get(),
        "rank": ballot.rank.get(),
        "vote_id": ballot.vote_id.as_ref().map(VoteId::as_str),
        "voter_id": ballot.voter_id,
    });
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    bandvote_domain::reply::parse_json(&bytes).expect("the forwarded body is JSON")
}

/// Asserts that an accepted vote reads back as the same vote whichever front sends it on.
pub fn check_resent(ballot: &Ballot) {
    check_ballot(ballot);
    let via_grpc = Ballot::parse(&resent_as_proto(ballot));
    assert_eq!(via_grpc.as_ref(), Ok(ballot), "re-sent as protobuf strings by the gRPC front");
    let via_json = Ballot::from_json(&resent_as_json(ballot));
    assert_eq!(via_json.as_ref(), Ok(ballot), "forwarded as JSON by the Wasm front");
}
