//! The JSON bodies of the HTTP vote routes, shared by every HTTP front: the native routes in
//! `ingest` and the WebAssembly component in `ingest-wasm`. One definition here means a bad
//! request gets the same status and the same body whichever front it reached.
//!
//! Errors have the shape `{"error": {"code": ..., "message": ..., ...details}}`; an accepted vote
//! is `{"status": "accepted", "vote_id": ...}`. Statuses are plain numbers: this crate does no
//! I/O and knows no HTTP library.

use serde_json::{Map, Value, json};

use crate::{
    InvalidVote, Refused, VoteId,
    ballot::{BallotInput, json::Item},
};

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
    serde_json::from_slice(body).map_err(not_json)
}

fn not_json(err: serde_json::Error) -> ErrorReply {
    ErrorReply::malformed(format!("the body is not valid JSON: {err}"))
}

/// Reads one vote's body straight into its fields: not JSON, the body is malformed; JSON but
/// not an object, the vote is invalid. The same as [`BallotInput::from_value`] of the parsed body,
/// without building the JSON tree.
pub fn read_vote(body: &[u8]) -> Result<Result<BallotInput, InvalidVote>, ErrorReply> {
    serde_json::from_slice::<Item>(body).map(Item::into_vote).map_err(not_json)
}

/// Reads a batch body, a JSON array of votes or `{"votes": [...]}`, not empty, straight into each
/// vote's fields (or, for a vote that is not a JSON object, why not). How many votes a batch may
/// hold is the caller's to check: the native route charges a client's rate limit in between.
pub fn read_batch(body: &[u8]) -> Result<Vec<Result<BallotInput, InvalidVote>>, ErrorReply> {
    const SHAPE: &str = "a batch must be a JSON array of votes or {\"votes\": [...]}";
    let body: Item = serde_json::from_slice(body).map_err(not_json)?;
    let votes = body.into_batch().ok_or_else(|| ErrorReply::malformed(SHAPE))?;
    if votes.is_empty() {
        return Err(ErrorReply::malformed("the batch holds no votes"));
    }
    Ok(votes.into_iter().map(Item::into_vote).collect())
}

/// The votes of a batch read by [`read_batch`] when every one is a JSON object; else where each
/// of the others is in the batch and why it is not one. Every route refuses such a batch on this
/// alone, before any field of the other votes is checked.
pub fn batch_objects(
    votes: Vec<Result<BallotInput, InvalidVote>>,
) -> Result<Vec<BallotInput>, Vec<(usize, InvalidVote)>> {
    if votes.iter().all(Result::is_ok) {
        return Ok(votes.into_iter().flatten().collect());
    }
    Err(votes.into_iter().enumerate().filter_map(|(index, vote)| vote.err().map(|err| (index, err))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ballot, Input};

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
    fn batch_shapes() {
        assert_eq!(read_batch(br#"{"votes": [1, 2]}"#).expect("a batch").len(), 2);
        assert_eq!(read_batch(b"[]").expect_err("empty").message, "the batch holds no votes");
        let shape = read_batch(br#"{"ballots": [1]}"#).expect_err("shape");
        assert_eq!((shape.status, shape.code.code()), (400, "malformed_json"));
        assert_eq!(shape.message, "a batch must be a JSON array of votes or {\"votes\": [...]}");
        let not_objects = read_batch(br#"[{"name": "A"}, "B", null]"#).expect("a batch");
        assert_eq!(not_objects[0].as_ref().expect("an object").name, Input::Text("A".into()));
        let problems: Vec<String> =
            not_objects[1..].iter().map(|v| v.as_ref().expect_err("not an object").to_string()).collect();
        assert_eq!(problems, ["vote: must be a JSON object, got a string", "vote: must be a JSON object, got null"]);

        let refused = batch_objects(not_objects).expect_err("two votes are not objects");
        let places: Vec<usize> = refused.iter().map(|(index, _)| *index).collect();
        assert_eq!(places, [1, 2]);
        let objects = batch_objects(read_batch(br#"[{"name": "A"}, {}]"#).expect("a batch")).expect("objects");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].name, Input::Text("A".into()));
    }

    /// What the bodies read as through a JSON tree, the way they were read before [`read_vote`]
    /// and [`read_batch`]: the reference they must agree with.
    fn vote_by_tree(body: &[u8]) -> Result<Result<BallotInput, InvalidVote>, ErrorReply> {
        parse_json(body).map(BallotInput::from_value)
    }

    fn batch_by_tree(body: &[u8]) -> Result<Vec<Result<BallotInput, InvalidVote>>, ErrorReply> {
        let shape = || ErrorReply::malformed("a batch must be a JSON array of votes or {\"votes\": [...]}");
        let votes = match parse_json(body)? {
            Value::Array(votes) => votes,
            Value::Object(mut object) => match object.remove("votes") {
                Some(Value::Array(votes)) => votes,
                _ => return Err(shape()),
            },
            _ => return Err(shape()),
        };
        if votes.is_empty() {
            return Err(ErrorReply::malformed("the batch holds no votes"));
        }
        Ok(votes.into_iter().map(BallotInput::from_value).collect())
    }

    #[test]
    fn bodies_read_as_a_json_tree_reads_them() {
        let mut bodies: Vec<Vec<u8>> = [
            r#"{"name": "Alux Nahual", "album": "Conquista", "year": "1990", "rank": "9.5"}"#,
            r#"{"name": "A", "name": 5, "album": null, "year": 1990.0, "rank": 1e2, "vote_id": true}"#,
            r#"{"n\u0061me": "A\u00e9", "voter_id": ["x"], "extra": {"name": "B"}, "rank": {"a": 1}}"#,
            r#"{"name": "A", "extra": 1e999}"#,
            r#"{"name": "A", "extra": "\ud800"}"#,
            r#"{"name": "A", "extra": "\ud800\udc00"}"#,
            r#"{"name": 18446744073709551616, "year": -1, "rank": -0.0}"#,
            r#"{"votes": [{"name": "A"}], "votes": 5}"#,
            r#"{"votes": 5, "votes": [{"name": "A"}, 7, [], {}]}"#,
            r#"{"votes": {"votes": [1]}}"#,
            r#"[{"name": "A"}] x"#,
            r#"[{"name": "A"},]"#,
            r#"{"name": "A" "album": "B"}"#,
            "",
            " ",
            "null",
            "true",
            "\"text\"",
            "12",
            "[]",
            "{}",
            "[[]]",
            "{\"votes\": []}",
        ]
        .iter()
        .map(|body| body.as_bytes().to_vec())
        .collect();
        bodies.push(b"{\"name\": \"A\", \"extra\": \"\xff\"}".to_vec());
        bodies.push(b"{\"name\": \"\xc3\xa9\"}".to_vec());
        bodies.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes());
        // And many made at random: JSON with the fields of a vote and of a batch, strange values,
        // and one in four of them broken by a byte taken out or put in.
        let mut random = Lcg(0x5eed);
        for _ in 0..20_000 {
            let mut body = Vec::new();
            random_value(&mut random, &mut body, 0);
            if random.below(4) == 0 {
                let at = random.below(body.len() + 1);
                match random.below(2) {
                    0 if at < body.len() => drop(body.remove(at)),
                    _ => body.insert(at, b",:{}[]\"\\x"[random.below(9)]),
                }
            }
            bodies.push(body);
        }
        let mut valid = (0, 0);
        for body in &bodies {
            let text = String::from_utf8_lossy(body);
            let vote = read_vote(body);
            assert_eq!(vote, vote_by_tree(body), "one vote: {text}");
            let batch = read_batch(body);
            assert_eq!(batch, batch_by_tree(body), "a batch: {text}");
            valid.0 += usize::from(vote.is_ok_and(|v| v.is_ok()));
            valid.1 += usize::from(batch.is_ok());
        }
        // The random bodies must reach past the JSON errors, or they would test little.
        assert!(valid.0 > 2_000 && valid.1 > 1_000, "objects read: {}, batches read: {}", valid.0, valid.1);
    }

    /// A small deterministic generator (Knuth's MMIX LCG), so that a failure repeats.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as usize % n
        }
    }

    fn random_value(random: &mut Lcg, out: &mut Vec<u8>, depth: usize) {
        const KEYS: [&[u8]; 10] =
            [b"name", b"album", b"year", b"rank", b"vote_id", b"voter_id", b"votes", b"x", b"n\\u0061me", b"\xff"];
        const SCALARS: [&[u8]; 11] = [
            b"\"Alux Nahual\"",
            b"\"1997\"",
            b"\"9.5\"",
            b"\"A\\u00e9\"",
            b"\"\xc3\xa9\"",
            b"1997",
            b"-2.5",
            b"0.1e-400",
            b"18446744073709551616",
            b"null",
            b"true",
        ];
        // Not JSON, or not what a JSON tree takes: one scalar in twenty.
        const BAD: [&[u8]; 5] = [b"\"\\ud800\"", b"\"\\q\"", b"\"\xff\"", b"1e999", b"01"];
        match random.below(if depth > 3 { 2 } else { 5 }) {
            0 | 1 if random.below(20) == 0 => out.extend_from_slice(BAD[random.below(BAD.len())]),
            0 | 1 => out.extend_from_slice(SCALARS[random.below(SCALARS.len())]),
            2 => {
                out.push(b'[');
                for i in 0..random.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    random_value(random, out, depth + 1);
                }
                out.push(b']');
            }
            _ => {
                out.push(b'{');
                for i in 0..random.below(7) {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.push(b'"');
                    out.extend_from_slice(KEYS[random.below(KEYS.len())]);
                    out.extend_from_slice(b"\": ");
                    random_value(random, out, depth + 1);
                }
                out.push(b'}');
            }
        }
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
