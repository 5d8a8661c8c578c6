//! Votes for the bad-input tables: one good vote, and that vote with one field changed or left out.
//! Every front (the native routes, the Wasm route) is checked against the same variations.

use serde_json::{Value, json};

/// A vote every route accepts: a band and album of the test roster, a year and a rank.
pub fn good() -> Value {
    json!({"name": "Alux Nahual", "album": "Conquista", "year": "1990", "rank": "9.5"})
}

/// [`good`] with `field` set to `value`.
pub fn with(field: &str, value: Value) -> Value {
    let mut vote = good();
    vote[field] = value;
    vote
}

/// [`good`] without `field`.
pub fn without(field: &str) -> Value {
    let mut vote = good();
    vote.as_object_mut().expect("a vote is an object").remove(field);
    vote
}
