//! The JSON bodies of the HTTP vote routes, shared by every HTTP front: the native routes in
//! `ingest` and the WebAssembly component in `ingest-wasm`. One definition here means a bad
//! request gets the same status and the same body whichever front it reached.
//!
//! Errors have the shape `{"error": {"code": ..., "message": ..., ...details}}`; an accepted vote
//! is `{"status": "accepted", "vote_id": ...}`. Statuses are plain numbers: this crate does no
//! I/O and knows no HTTP library.

use serde_json::{Map, Value, json};

use crate::{InvalidVote, Refused, VoteId};

/// Every error a bandvote HTTP service answers with: the body's `code`, its one HTTP status, and
/// the gRPC code the gRPC route gives the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400 `malformed_json`: the body is not JSON, or not the JSON shape the path takes.
    MalformedJson,
    /// 400 `bad_request`: the body could not be read.
    BadRequest,
    /// 400 `invalid_vote`: a vote (or votes of a batch) with bad fields.
    InvalidVote,
    /// 413 `body_too_large`.
    BodyTooLarge,
    /// 413 `batch_too_large`.
    BatchTooLarge,
    /// The contest refused the vote: 403 `voting_closed`, 409 `limit_reached`,
    /// `band_limit_reached` or `vote_id_conflict`.
    Refused(Refused),
    /// 409 `refused` (403 when every refused vote arrived outside the window): votes of a batch.
    BatchRefused { all_closed: bool },
    /// 429 `rate_limited`: the client is over its rate or its burst.
    RateLimited,
    /// 503 `overloaded`: the service is at its limit of requests in flight.
    Overloaded,
    /// 503 `timeout`: the request did not finish in time.
    Timeout,
    /// 503 `unavailable`: a dependency (Kafka, MongoDB, the gRPC server) did not answer.
    Unavailable,
    /// 502 `upstream_error`: the gRPC server answered something the front cannot pass on.
    UpstreamError,
    /// 404 `not_found`.
    NotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 400 `invalid_parameter`: a query parameter of the logs API.
    InvalidParameter,
    /// 503 `tally_pending`: the logs API's first tally for a filter is not ready.
    TallyPending,
    /// 422 `too_many_groups`: a tally of more groups than the logs API reads.
    TooManyGroups,
}

impl ErrorCode {
    /// Every error, each refusal reason and both kinds of refused batch included.
    pub const EVERY: [ErrorCode; 21] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::InvalidVote,
        ErrorCode::BodyTooLarge,
        ErrorCode::BatchTooLarge,
        ErrorCode::Refused(Refused::ALL[0]),
        ErrorCode::Refused(Refused::ALL[1]),
        ErrorCode::Refused(Refused::ALL[2]),
        ErrorCode::Refused(Refused::ALL[3]),
        ErrorCode::BatchRefused { all_closed: true },
        ErrorCode::BatchRefused { all_closed: false },
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::UpstreamError,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::InvalidParameter,
        ErrorCode::TallyPending,
        ErrorCode::TooManyGroups,
    ];

    /// The body's `code`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidVote => "invalid_vote",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::Refused(reason) => reason.code(),
            ErrorCode::BatchRefused { .. } => "refused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::TallyPending => "tally_pending",
            ErrorCode::TooManyGroups => "too_many_groups",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson | ErrorCode::BadRequest | ErrorCode::InvalidVote | ErrorCode::InvalidParameter => {
                400
            }
            ErrorCode::BodyTooLarge | ErrorCode::BatchTooLarge => 413,
            ErrorCode::Refused(Refused::VotingClosed) | ErrorCode::BatchRefused { all_closed: true } => 403,
            ErrorCode::Refused(_) | ErrorCode::BatchRefused { all_closed: false } => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded | ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::TallyPending => 503,
            ErrorCode::UpstreamError => 502,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooManyGroups => 422,
        }
    }

    /// The gRPC status code (its number: this crate knows no gRPC library) of the same error on
    /// the gRPC route: `INVALID_ARGUMENT` 3, `DEADLINE_EXCEEDED` 4, `NOT_FOUND` 5, `ALREADY_EXISTS`
    /// 6, `RESOURCE_EXHAUSTED` 8, `FAILED_PRECONDITION` 9, `OUT_OF_RANGE` 11, `UNIMPLEMENTED` 12,
    /// `UNAVAILABLE` 14.
    pub fn grpc(self) -> i32 {
        match self {
            ErrorCode::MalformedJson
            | ErrorCode::BadRequest
            | ErrorCode::InvalidVote
            | ErrorCode::InvalidParameter
            | ErrorCode::TooManyGroups => 3,
            ErrorCode::Timeout => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::Refused(Refused::VoteIdConflict) => 6,
            ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::BatchTooLarge => 8,
            ErrorCode::Refused(_) | ErrorCode::BatchRefused { .. } => 9,
            ErrorCode::BodyTooLarge => 11,
            ErrorCode::MethodNotAllowed => 12,
            ErrorCode::Unavailable | ErrorCode::UpstreamError | ErrorCode::TallyPending => 14,
        }
    }
}

/// An error reply: its HTTP status and the body's `code`, `message` and details.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    /// Extra members of the `error` object, such as `fields` or `vote_id`.
    pub details: Map<String, Value>,
}

impl ErrorReply {
    /// The reply of `code`, with its status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { status: code.status(), code, message: message.into(), details: Map::new() }
    }

    /// Adds the members of `details` (a JSON object; anything else adds nothing).
    pub fn with_details(mut self, details: Value) -> Self {
        if let Value::Object(details) = details {
            self.details.extend(details);
        }
        self
    }

    /// 400 `malformed_json`: the body is not JSON, or not the JSON shape the path takes.
    pub fn malformed(message: impl Into<String>) -> Self {
        ErrorReply::new(ErrorCode::MalformedJson, message)
    }

    /// 400 `invalid_vote` naming each bad field.
    pub fn invalid_vote(invalid: &InvalidVote) -> Self {
        ErrorReply::new(ErrorCode::InvalidVote, invalid.to_string())
            .with_details(json!({ "fields": field_errors(invalid) }))
    }

    /// 400 `invalid_vote` for a batch, naming each bad vote by its index.
    pub fn invalid_batch(total: usize, invalid: &[(usize, InvalidVote)]) -> Self {
        let votes: Vec<Value> =
            invalid.iter().map(|(index, e)| json!({"index": index, "fields": field_errors(e)})).collect();
        ErrorReply::new(ErrorCode::InvalidVote, invalid_batch_message(total, invalid.len()))
            .with_details(json!({ "votes": votes }))
    }

    /// 413 `body_too_large`.
    pub fn body_too_large(message: impl Into<String>) -> Self {
        ErrorReply::new(ErrorCode::BodyTooLarge, message)
    }

    /// 413 `batch_too_large`.
    pub fn batch_too_large(most: usize, got: usize) -> Self {
        ErrorReply::new(ErrorCode::BatchTooLarge, format!("a batch may hold at most {most} votes, got {got}"))
    }

    /// 403 `voting_closed`: the vote arrived outside the contest's voting window (given as
    /// `opens` and `closes`, RFC 3339, when the contest sets them).
    pub fn voting_closed(window: &crate::Window) -> Self {
        let mut reply = ErrorReply::new(ErrorCode::Refused(Refused::VotingClosed), window.describe());
        if let Some(opens) = &window.opens {
            reply.details.insert("opens".into(), opens.text.clone().into());
        }
        if let Some(closes) = &window.closes {
            reply.details.insert("closes".into(), closes.text.clone().into());
        }
        reply
    }

    /// A vote the contest refuses: 409 `limit_reached`, `band_limit_reached` or `vote_id_conflict`,
    /// 403 `voting_closed`.
    pub fn refused(reason: Refused, message: impl Into<String>) -> Self {
        ErrorReply::new(ErrorCode::Refused(reason), message)
    }

    /// 503 `unavailable`: the vote was not accepted; a retry is safe with the ids in the details.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ErrorReply::new(ErrorCode::Unavailable, message)
    }

    /// 405 `method_not_allowed`: `method` on a path that takes `takes` ("GET", or "POST with a JSON
    /// vote"). The same words on every front.
    pub fn method_not_allowed(method: &str, takes: &str) -> Self {
        ErrorReply::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed here; this path takes {takes}"))
    }

    /// The reply body: `{"error": {"code", "message", ...details}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.code().into());
        error.insert("message".into(), self.message.clone().into());
        error.extend(self.details.clone());
        json!({ "error": error })
    }
}

/// The message of a batch refused for invalid votes.
pub fn invalid_batch_message(total: usize, invalid: usize) -> String {
    format!("{invalid} of {total} votes are invalid; nothing was accepted")
}

/// `[{field, problem}]` for each bad field.
pub fn field_errors(invalid: &InvalidVote) -> Value {
    invalid.errors.iter().map(|e| json!({"field": e.field, "problem": e.problem})).collect()
}

/// The reply to an accepted vote.
pub fn accepted(vote_id: &VoteId) -> Value {
    json!({"status": "accepted", "vote_id": vote_id.as_str()})
}

/// The reply to an accepted batch.
pub fn accepted_all(vote_ids: &[VoteId]) -> Value {
    let ids: Vec<&str> = vote_ids.iter().map(VoteId::as_str).collect();
    json!({"status": "accepted", "accepted": vote_ids.len(), "vote_ids": ids})
}

/// The message of a body larger than the limit (the words axum uses, so every front says the same).
pub const BODY_TOO_LARGE: &str = "Failed to buffer the request body: length limit exceeded";

/// Reads a request body as JSON.
pub fn parse_json(body: &[u8]) -> Result<Value, ErrorReply> {
    serde_json::from_slice(body).map_err(|err| ErrorReply::malformed(format!("the body is not valid JSON: {err}")))
}

/// The votes of a batch body: a JSON array, or `{"votes": [...]}`; not empty, at most `most`.
pub fn batch_votes(body: Value, most: usize) -> Result<Vec<Value>, ErrorReply> {
    const SHAPE: &str = "a batch must be a JSON array of votes or {\"votes\": [...]}";
    let votes = match body {
        Value::Array(votes) => votes,
        Value::Object(mut object) => match object.remove("votes") {
            Some(Value::Array(votes)) => votes,
            _ => return Err(ErrorReply::malformed(SHAPE)),
        },
        _ => return Err(ErrorReply::malformed(SHAPE)),
    };
    if votes.is_empty() {
        return Err(ErrorReply::malformed("the batch holds no votes"));
    }
    if votes.len() > most {
        return Err(ErrorReply::batch_too_large(most, votes.len()));
    }
    Ok(votes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ballot;

    #[test]
    fn an_invalid_vote_names_each_field() {
        let invalid = Ballot::from_json(&json!({"name": "A", "album": "B", "year": "x"})).expect_err("invalid");
        let reply = ErrorReply::invalid_vote(&invalid);
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.body(),
            json!({"error": {
                "code": "invalid_vote",
                "message": "year: must be a whole number such as \"1997\", got \"x\"; rank: is required",
                "fields": [
                    {"field": "year", "problem": "must be a whole number such as \"1997\", got \"x\""},
                    {"field": "rank", "problem": "is required"},
                ],
            }})
        );
    }

    #[test]
    fn batch_shapes_and_limits() {
        assert_eq!(batch_votes(json!({"votes": [1, 2]}), 2).expect("a batch").len(), 2);
        assert_eq!(batch_votes(json!([]), 2).expect_err("empty").message, "the batch holds no votes");
        assert_eq!(batch_votes(json!({"ballots": [1]}), 2).expect_err("shape").code.code(), "malformed_json");
        let too_many = batch_votes(json!([1, 2, 3]), 2).expect_err("too many");
        assert_eq!((too_many.status, too_many.code.code()), (413, "batch_too_large"));
        assert_eq!(too_many.message, "a batch may hold at most 2 votes, got 3");
    }

    /// The error codes an OpenAPI document names (every `code` property's `enum`).
    fn documented_codes(document: &str) -> Vec<String> {
        fn walk(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(object) => {
                    if let Some(Value::Array(codes)) = object.get("code").and_then(|code| code.get("enum")) {
                        found.extend(codes.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                    object.values().for_each(|v| walk(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(&serde_json::from_str(document).expect("an OpenAPI document is JSON"), &mut found);
        found
    }

    #[test]
    fn every_error_code_is_one_code_with_one_status() {
        let mut codes: Vec<&str> = ErrorCode::EVERY.iter().map(|code| code.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        // The refused batch is one code with two statuses; every other code is one variant.
        assert_eq!(codes.len(), ErrorCode::EVERY.len() - 1, "{codes:?}");
        for code in ErrorCode::EVERY {
            assert!(matches!(code.status(), 400..=599), "{code:?}");
            let reply = ErrorReply::new(code, "m");
            assert_eq!((reply.status, reply.code), (code.status(), code));
            assert_eq!(reply.body()["error"]["code"], code.code());
        }
        assert_eq!(ErrorReply::refused(Refused::VotingClosed, "m").status, 403);
        assert_eq!(ErrorReply::refused(Refused::LimitReached, "m").status, 409);
        assert_eq!(ErrorCode::Refused(Refused::VoteIdConflict).grpc(), 6, "ALREADY_EXISTS");
        for (document, name) in [
            (include_str!("../../ingest/openapi.json"), "ingest"),
            (include_str!("../../logs-api/openapi.json"), "logs-api"),
        ] {
            let documented = documented_codes(document);
            assert!(!documented.is_empty(), "{name} documents its error codes");
            for code in documented {
                assert!(codes.contains(&code.as_str()), "{name}'s openapi.json names {code:?}, which no ErrorCode is");
            }
        }
    }

    #[test]
    fn not_json_is_malformed() {
        let reply = parse_json(b"{\"name\": \"Alux").expect_err("not JSON");
        assert_eq!((reply.status, reply.code.code()), (400, "malformed_json"));
        assert!(reply.message.starts_with("the body is not valid JSON: EOF"), "{}", reply.message);
    }
}
