//! The JSON bodies of the HTTP vote routes, shared by every HTTP front: the native routes in
//! `ingest` and the WebAssembly component in `ingest-wasm`. One definition here means a bad
//! request gets the same status and the same body whichever front it reached.
//!
//! Errors have the shape `{"error": {"code": ..., "message": ..., ...details}}`; an accepted vote
//! is `{"status": "accepted", "vote_id": ...}`. Statuses are plain numbers: this crate does no
//! I/O and knows no HTTP library.

use serde_json::{Map, Value, json};

use crate::{InvalidVote, VoteId};

/// An error reply: its HTTP status and the body's `code`, `message` and details.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the `error` object, such as `fields` or `vote_id`.
    pub details: Map<String, Value>,
}

impl ErrorReply {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ErrorReply { status, code, message: message.into(), details: Map::new() }
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
        ErrorReply::new(400, "malformed_json", message)
    }

    /// 400 `invalid_vote` naming each bad field.
    pub fn invalid_vote(invalid: &InvalidVote) -> Self {
        ErrorReply::new(400, "invalid_vote", invalid.to_string())
            .with_details(json!({ "fields": field_errors(invalid) }))
    }

    /// 400 `invalid_vote` for a batch, naming each bad vote by its index.
    pub fn invalid_batch(total: usize, invalid: &[(usize, InvalidVote)]) -> Self {
        let votes: Vec<Value> =
            invalid.iter().map(|(index, e)| json!({"index": index, "fields": field_errors(e)})).collect();
        ErrorReply::new(400, "invalid_vote", invalid_batch_message(total, invalid.len()))
            .with_details(json!({ "votes": votes }))
    }

    /// 413 `body_too_large`.
    pub fn body_too_large(message: impl Into<String>) -> Self {
        ErrorReply::new(413, "body_too_large", message)
    }

    /// 413 `batch_too_large`.
    pub fn batch_too_large(most: usize, got: usize) -> Self {
        ErrorReply::new(413, "batch_too_large", format!("a batch may hold at most {most} votes, got {got}"))
    }

    /// 403 `voting_closed`: the vote arrived outside the contest's voting window (given as
    /// `opens` and `closes`, RFC 3339, when the contest sets them).
    pub fn voting_closed(window: &crate::Window) -> Self {
        let mut reply = ErrorReply::new(403, "voting_closed", window.describe());
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
    pub fn refused(reason: crate::Refused, message: impl Into<String>) -> Self {
        let status = if reason == crate::Refused::VotingClosed { 403 } else { 409 };
        ErrorReply::new(status, reason.code(), message)
    }

    /// 503 `unavailable`: the vote was not accepted; a retry is safe with the ids in the details.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ErrorReply::new(503, "unavailable", message)
    }

    /// 405 `method_not_allowed`: `method` on a path that takes `takes` ("GET", or "POST with a JSON
    /// vote"). The same words on every front.
    pub fn method_not_allowed(method: &str, takes: &str) -> Self {
        ErrorReply::new(405, "method_not_allowed", format!("{method} is not allowed here; this path takes {takes}"))
    }

    /// The reply body: `{"error": {"code", "message", ...details}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
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
        assert_eq!(batch_votes(json!({"ballots": [1]}), 2).expect_err("shape").code, "malformed_json");
        let too_many = batch_votes(json!([1, 2, 3]), 2).expect_err("too many");
        assert_eq!((too_many.status, too_many.code), (413, "batch_too_large"));
        assert_eq!(too_many.message, "a batch may hold at most 2 votes, got 3");
    }

    #[test]
    fn not_json_is_malformed() {
        let reply = parse_json(b"{\"name\": \"Alux").expect_err("not JSON");
        assert_eq!((reply.status, reply.code), (400, "malformed_json"));
        assert!(reply.message.starts_with("the body is not valid JSON: EOF"), "{}", reply.message);
    }
}
