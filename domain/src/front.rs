//! The contract every vote front keeps, native (ingest) and WebAssembly (`ingest-wasm`) alike, and
//! that the benchmark's clients speak: the paths, the no-op header and the ids a front gives.
//! A batch's own rules (an array or `{"votes": [...]}`, at most `MAX_BATCH_VOTES`) are
//! [`reply::batch_votes`](crate::reply::batch_votes).

/// The paths that take one JSON vote: `/votes` and the original clients' paths.
pub const VOTE_PATHS: [&str; 5] = ["/votes", "/rust/send_data", "/rust", "/insert", "/"];

/// The path that takes a batch of JSON votes.
pub const BATCH_PATH: &str = "/votes/batch";

/// A request (HTTP header, gRPC metadata) that sends this header is checked, stamped and
/// answered, but not published, when the front was started with `NOOP_ROUTES=true`: the
/// benchmark's measure of a route without Kafka.
pub const NOOP_HEADER: &str = "x-bandvote-noop";

/// What a front does with a vote's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VotePath {
    One,
    Batch,
}

impl VotePath {
    /// The kind of `path`, if it is a vote path.
    pub fn of(path: &str) -> Option<VotePath> {
        if path == BATCH_PATH { Some(VotePath::Batch) } else { VOTE_PATHS.contains(&path).then_some(VotePath::One) }
    }
}

/// A new time-ordered vote id (UUIDv7, from the host's clock and random source), for a vote whose
/// client sent none. Built with the `new-ids` feature (the browser build does not give ids).
#[cfg(feature = "new-ids")]
pub fn new_vote_id() -> crate::VoteId {
    crate::VoteId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid vote id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_paths_are_told_apart() {
        assert_eq!(VotePath::of("/votes"), Some(VotePath::One));
        assert_eq!(VotePath::of("/"), Some(VotePath::One));
        assert_eq!(VotePath::of("/votes/batch"), Some(VotePath::Batch));
        assert_eq!(VotePath::of("/votes/"), None);
        assert_eq!(VotePath::of("/wasm/votes"), None, "a prefix is the front's own business");
    }
}
