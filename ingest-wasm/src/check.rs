//! The checks of the Wasm route, shared by both worlds the crate builds: the `wasi:http` front
//! (`main.rs`, under `wasmtime serve`) and the checker component (`lib.rs`, embedded in
//! `bandvote-ingest`). Each reads a request body with `bandvote-domain`, the code the native HTTP
//! route runs, so a bad request gets the same status and JSON body on every route.

use bandvote_domain::{
    Ballot, InvalidVote,
    front::new_vote_id,
    reply::{self, ErrorReply},
};

/// One vote: a JSON object, checked, with its id.
pub fn vote(body: &[u8]) -> Result<Ballot, ErrorReply> {
    let ballot = reply::read_vote(body)?
        .and_then(|input| Ballot::parse(&input))
        .map_err(|invalid| ErrorReply::invalid_vote(&invalid))?;
    Ok(with_id(ballot))
}

/// A batch of at most `most` votes: every vote is checked before any is taken, as on the native
/// route, and each gets its id. A refusal comes with the number of votes it turns away, counted
/// as the native route counts them (the bad votes of a batch, every vote of one too large).
pub fn batch(body: &[u8], most: usize) -> Result<Vec<Ballot>, (ErrorReply, usize)> {
    let inputs = reply::read_batch(body).map_err(|e| (e, 1))?;
    let total = inputs.len();
    if total > most {
        return Err((ErrorReply::batch_too_large(most, total), total));
    }
    let inputs = reply::batch_objects(inputs)
        .map_err(|not_objects| (ErrorReply::invalid_batch(total, &not_objects), not_objects.len()))?;
    let mut ballots = Vec::with_capacity(total);
    let mut invalid: Vec<(usize, InvalidVote)> = Vec::new();
    for (index, input) in inputs.into_iter().enumerate() {
        match Ballot::parse(&input) {
            Ok(ballot) => ballots.push(with_id(ballot)),
            Err(err) => invalid.push((index, err)),
        }
    }
    if !invalid.is_empty() {
        return Err((ErrorReply::invalid_batch(total, &invalid), invalid.len()));
    }
    Ok(ballots)
}

/// The ballot with its id: the client's, else a new one, so that any refusal can name it.
fn with_id(mut ballot: Ballot) -> Ballot {
    ballot.vote_id.get_or_insert_with(new_vote_id);
    ballot
}
