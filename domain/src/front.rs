//! The contract every vote front keeps, native (ingest) and WebAssembly (`ingest-wasm`) alike, and
//! that the benchmark's clients speak: the paths, the no-op header and the ids a front gives.
//! A batch's own rules (an array or `{"votes": [...]}`, at most `MAX_BATCH_VOTES`) are
//! [`reply::read_batch`](crate::reply::read_batch).

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
    let mut text = uuid::Uuid::encode_buffer();
    crate::VoteId::made(uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text))
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

    #[cfg(feature = "new-ids")]
    #[test]
    fn a_new_vote_id_is_a_valid_time_ordered_uuid() {
        let (first, second) = (new_vote_id(), new_vote_id());
        assert_eq!(crate::VoteId::parse(first.as_str()), Ok(first.clone()));
        let uuid = uuid::Uuid::parse_str(first.as_str()).expect("a UUID");
        assert_eq!((uuid.get_version_num(), uuid.hyphenated().to_string()), (7, first.as_str().to_owned()));
        assert!(first < second, "{first} then {second}");
    }
}
