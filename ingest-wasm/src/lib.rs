//! bandvote's Wasm route as a checker component (the `checker` world of `wit/checker.wit`), for a
//! host that embeds a WebAssembly runtime and publishes the votes itself: `bandvote-ingest` with
//! `WASM_COMPONENT`. The host reads the request; the component checks its body inside the sandbox
//! ([`check`]) and gives each vote its id; the host casts what it gets back on its own producer.
//!
//! The component keeps no state between calls: the host may instantiate it for every request.

mod check;

/// The world's bindings and their implementation: the generated ABI glue is `unsafe` code, so the
/// lint is lifted here only; the checks themselves are in [`check`].
#[allow(unsafe_code)]
mod component {
    use bandvote_domain::{Ballot as Checked, reply::ErrorReply};

    use crate::check;

    wit_bindgen::generate!({ world: "checker", path: "wit" });

    struct Checker;

    impl Guest for Checker {
        fn check_vote(body: Vec<u8>) -> Result<Ballot, Refusal> {
            check::vote(&body).map(checked).map_err(|refused| refusal(refused, 1))
        }

        fn check_batch(body: Vec<u8>, max_votes: u32) -> Result<Vec<Ballot>, Refusal> {
            let most = usize::try_from(max_votes).unwrap_or(usize::MAX);
            check::batch(&body, most)
                .map(|ballots| ballots.into_iter().map(checked).collect())
                .map_err(|(refused, votes)| refusal(refused, votes))
        }
    }

    /// A checked vote as the host takes it.
    fn checked(ballot: Checked) -> Ballot {
        Ballot {
            vote_id: ballot.vote_id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default(),
            band: ballot.band,
            album: ballot.album,
            year: ballot.year.get(),
            rank: ballot.rank.get(),
            voter_id: ballot.voter_id,
        }
    }

    fn refusal(refused: ErrorReply, votes: usize) -> Refusal {
        Refusal {
            status: refused.status,
            body: refused.body().to_string(),
            votes: u32::try_from(votes).unwrap_or(u32::MAX),
        }
    }

    export!(Checker);
}
