//! Parsing untrusted vote input into a [`Ballot`].
//!
//! The original clients send four strings, `{"name", "album", "year", "rank"}`; `year` and `rank`
//! may also be JSON numbers and `rank` may be decimal. `vote_id` (the client's idempotency key) and
//! `voter_id` are optional. Every problem is reported with the field it belongs to.

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::{UnicodeNormalization as _, is_nfc};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

pub(crate) mod json;

/// Longest band or album name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest `vote_id` or `voter_id`, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Oldest and newest release year accepted.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;
/// Lowest and highest rank accepted.
pub const RANKS: std::ops::RangeInclusive<f64> = 0.0..=100.0;

/// One field of untrusted input, as it arrived.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Input {
    /// The field was not sent (or, in protobuf, left empty where empty means "not sent").
    #[default]
    Missing,
    Text(String),
    Number(serde_json::Number),
    /// Any other JSON type; the value is the type's name (`"null"`, `"boolean"`, ...).
    Other(&'static str),
}

impl Input {
    /// Reads a field of a JSON object.
    pub fn from_json(value: Option<&serde_json::Value>) -> Self {
        Input::from_value(value.cloned())
    }

    /// Reads a field of a JSON object, taken out of it.
    pub fn from_value(value: Option<serde_json::Value>) -> Self {
        use serde_json::Value;
        match value {
            None => Input::Missing,
            Some(Value::String(s)) => Input::Text(s),
            Some(Value::Number(n)) => Input::Number(n),
            Some(Value::Null) => Input::Other("null"),
            Some(Value::Bool(_)) => Input::Other("boolean"),
            Some(Value::Array(_)) => Input::Other("array"),
            Some(Value::Object(_)) => Input::Other("object"),
        }
    }

    /// Reads an optional protobuf string, where the empty string means "not sent".
    pub fn from_optional_proto(value: &str) -> Self {
        if value.is_empty() { Input::Missing } else { Input::Text(value.to_owned()) }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Input::Missing => "nothing",
            Input::Text(_) => "a string",
            Input::Number(_) => "a number",
            Input::Other(name) => name,
        }
    }
}

/// The raw fields of one vote, before validation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BallotInput {
    pub name: Input,
    pub album: Input,
    pub year: Input,
    pub rank: Input,
    pub vote_id: Input,
    pub voter_id: Input,
}

impl BallotInput {
    /// Reads the fields of a JSON object; unknown fields are ignored, a non-object is an error.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, InvalidVote> {
        BallotInput::from_value(value.clone())
    }

    /// [`BallotInput::from_json`], taking the fields out of the value instead of copying them.
    pub fn from_value(value: serde_json::Value) -> Result<Self, InvalidVote> {
        let mut object = match value {
            serde_json::Value::Object(object) => object,
            other => return Err(InvalidVote::not_an_object(&Input::from_value(Some(other)))),
        };
        let mut field = |name: &str| Input::from_value(object.remove(name));
        Ok(BallotInput {
            name: field("name"),
            album: field("album"),
            year: field("year"),
            rank: field("rank"),
            vote_id: field("vote_id"),
            voter_id: field("voter_id"),
        })
    }

    /// Reads the four original protobuf strings plus the optional ids; empty means not sent.
    pub fn from_proto(name: &str, album: &str, year: &str, rank: &str, vote_id: &str, voter_id: &str) -> Self {
        BallotInput {
            name: Input::from_optional_proto(name),
            album: Input::from_optional_proto(album),
            year: Input::from_optional_proto(year),
            rank: Input::from_optional_proto(rank),
            vote_id: Input::from_optional_proto(vote_id),
            voter_id: Input::from_optional_proto(voter_id),
        }
    }
}

/// A release year, within [`YEARS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Year(i32);

impl Year {
    pub fn get(self) -> i32 {
        self.0
    }
}

/// A rank given to an album, a finite decimal within [`RANKS`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rank(f64);

impl Rank {
    pub fn get(self) -> f64 {
        self.0
    }
}

/// An idempotency key: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VoteId(String);

impl VoteId {
    /// Checks an id made by the server or sent by a client.
    pub fn parse(id: &str) -> Result<Self, String> {
        check_id(id).map(|()| VoteId(id.to_owned()))
    }

    /// An id this crate made (a UUID's text), valid by construction: not checked again.
    #[cfg(feature = "new-ids")]
    pub(crate) fn made(id: &str) -> Self {
        debug_assert_eq!(check_id(id), Ok(()));
        VoteId(id.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A vote that passed validation. `vote_id` is the client's, when it sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct Ballot {
    pub band: String,
    pub album: String,
    pub year: Year,
    pub rank: Rank,
    pub vote_id: Option<VoteId>,
    pub voter_id: Option<String>,
}

impl Ballot {
    /// Validates every field, reporting all the problems at once.
    pub fn parse(input: &BallotInput) -> Result<Self, InvalidVote> {
        fn keep<T>(errors: &mut Vec<FieldError>, field: &'static str, result: Result<T, String>) -> Option<T> {
            result.map_err(|problem| errors.push(FieldError { field, problem })).ok()
        }
        let mut errors = Vec::new();
        let band = keep(&mut errors, "name", parse_name(&input.name));
        let album = keep(&mut errors, "album", parse_name(&input.album));
        let year = keep(&mut errors, "year", parse_year(&input.year));
        let rank = keep(&mut errors, "rank", parse_rank(&input.rank));
        let vote_id = keep(&mut errors, "vote_id", parse_optional_id(&input.vote_id).map(|id| id.map(VoteId)));
        let voter_id = keep(&mut errors, "voter_id", parse_optional_id(&input.voter_id));
        match (band, album, year, rank, vote_id, voter_id) {
            (Some(band), Some(album), Some(year), Some(rank), Some(vote_id), Some(voter_id)) => {
                Ok(Ballot { band, album, year, rank, vote_id, voter_id })
            }
            _ => Err(InvalidVote { errors }),
        }
    }

    /// Parses a JSON object into a ballot.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, InvalidVote> {
        Ballot::parse(&BallotInput::from_json(value)?)
    }
}

/// Reads a band or album name: trimmed, in Unicode NFC (so that a name typed with a precomposed
/// `í` and one typed with `i` plus a combining accent are one name), 1 to [`MAX_NAME_CHARS`]
/// characters after normalising, with no control character and no format character (category
/// Cf: zero-width spaces and joiners, bidirectional controls, the byte order mark...), which
/// would make two names that look the same differ.
fn parse_name(input: &Input) -> Result<String, String> {
    match input {
        Input::Text(text) => normal_name(text),
        Input::Missing => Err("is required".into()),
        other => Err(format!("must be a string, got {}", other.type_name())),
    }
}

/// A band or album name as votes and the contest file compare it: trimmed, in Unicode NFC, at most
/// [`MAX_NAME_CHARS`] characters, without control or invisible format characters.
pub fn normal_name(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    // ASCII text is in NFC already, has one character per byte and no format character (the first
    // one is U+00AD): most names are read without a look-up in the Unicode tables.
    let ascii = text.is_ascii();
    let text: String = if ascii || is_nfc(text) { text.to_owned() } else { text.nfc().collect() };
    let chars = if ascii { text.len() } else { text.chars().count() };
    if chars > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters, got {chars}"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if let Some(format) = text.chars().find(|c| !c.is_ascii() && c.general_category() == GeneralCategory::Format) {
        return Err(format!("contains an invisible format character U+{:04X}", u32::from(format)));
    }
    Ok(text)
}

fn parse_year(input: &Input) -> Result<Year, String> {
    let year: Option<i64> = match input {
        Input::Text(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err("must not be empty".into());
            }
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("must be a whole number such as \"1997\", got {}", quoted(text)));
            }
            text.parse().ok()
        }
        Input::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(year), _) => Some(year),
            // `1997.0` is a whole number too (JSON Schema calls it an integer).
            (None, Some(year)) if year.fract() == 0.0 && year.abs() < 1e9 => Some(year as i64),
            _ => return Err(format!("must be a whole number such as 1997, got {number}")),
        },
        Input::Missing => return Err("is required".into()),
        other => return Err(format!("must be a string or a number, got {}", other.type_name())),
    };
    match year {
        Some(year) if year >= i64::from(*YEARS.start()) && year <= i64::from(*YEARS.end()) => Ok(Year(year as i32)),
        _ => Err(format!("must be between {} and {}", YEARS.start(), YEARS.end())),
    }
}

/// Most digits after a rank's decimal point, as text or as the shortest text of a JSON number.
const MAX_RANK_DECIMALS: usize = 40;

fn parse_rank(input: &Input) -> Result<Rank, String> {
    let rank = match input {
        Input::Text(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err("must not be empty".into());
            }
            let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
            let digits =
                |s: &str, most: usize| !s.is_empty() && s.len() <= most && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(whole, 12) || !digits(fraction, MAX_RANK_DECIMALS) {
                return Err(format!("must be a decimal number such as \"9.5\", got {}", quoted(text)));
            }
            text.parse::<f64>().map_err(|_| format!("must be a decimal number, got {}", quoted(text)))?
        }
        Input::Number(number) => {
            let rank = number.as_f64().unwrap_or(f64::NAN);
            // The same rule as for text, on the shortest text of the number: the gRPC front re-sends
            // a JSON rank as text, and both must be read alike.
            let shortest = rank.to_string();
            let decimals = shortest.split_once('.').map_or(0, |(_, fraction)| fraction.len());
            if decimals > MAX_RANK_DECIMALS {
                return Err(format!("must have at most {MAX_RANK_DECIMALS} decimals, got {number}"));
            }
            rank
        }
        Input::Missing => return Err("is required".into()),
        other => return Err(format!("must be a string or a number, got {}", other.type_name())),
    };
    if rank.is_finite() && RANKS.contains(&rank) {
        // A JSON `-0` is zero; kept negative it would print as "-0", which the text form refuses.
        Ok(Rank(if rank == 0.0 { 0.0 } else { rank }))
    } else {
        Err(format!("must be between {} and {}", RANKS.start(), RANKS.end()))
    }
}

fn parse_optional_id(input: &Input) -> Result<Option<String>, String> {
    match input {
        Input::Missing | Input::Other("null") => Ok(None),
        Input::Text(text) => check_id(text).map(|()| Some(text.clone())),
        other => Err(format!("must be a string, got {}", other.type_name())),
    }
}

/// Ids are ASCII only, so every way of writing one is the same string: no normalisation needed.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    let chars = id.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(format!("must be at most {MAX_ID_CHARS} characters, got {chars}"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)) {
        return Err("may contain only letters, digits, '.', '_', ':' and '-'".into());
    }
    Ok(())
}

/// Quotes a value for an error message, cut short so that a huge input makes a short message.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN).collect();
        format!("{head:?}...")
    }
}

/// One field that is wrong, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Why a vote was refused: at least one [`FieldError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidVote {
    pub errors: Vec<FieldError>,
}

impl InvalidVote {
    pub fn one(field: &'static str, problem: impl Into<String>) -> Self {
        InvalidVote { errors: vec![FieldError { field, problem: problem.into() }] }
    }

    /// A vote that is not a JSON object, but `got`.
    fn not_an_object(got: &Input) -> Self {
        InvalidVote::one("vote", format!("must be a JSON object, got {}", got.type_name()))
    }
}

impl fmt::Display for InvalidVote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(value: serde_json::Value) -> Vec<String> {
        match Ballot::from_json(&value) {
            Ok(ballot) => panic!("accepted {ballot:?}"),
            Err(invalid) => invalid.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn accepts_the_original_four_strings() {
        let ballot = Ballot::from_json(
            &json!({"name": "Malacates Trebol Shop", "album": "Vueltas", "year": "1997", "rank": "9.5"}),
        )
        .expect("valid");
        assert_eq!(ballot.band, "Malacates Trebol Shop");
        assert_eq!(ballot.year.get(), 1997);
        assert_eq!(ballot.rank.get(), 9.5);
        assert_eq!(ballot.vote_id, None);
    }

    #[test]
    fn accepts_numbers_and_ids() {
        let ballot = Ballot::from_json(&json!({
            "name": " Bohemia Suburbana ", "album": "Mil palabras", "year": 1997, "rank": 86,
            "vote_id": "v-1", "voter_id": "phone:502"
        }))
        .expect("valid");
        assert_eq!(ballot.band, "Bohemia Suburbana");
        assert_eq!(ballot.rank.get(), 86.0);
        assert_eq!(ballot.vote_id.as_ref().map(VoteId::as_str), Some("v-1"));
        assert_eq!(ballot.voter_id.as_deref(), Some("phone:502"));
    }

    #[test]
    fn names_every_bad_field() {
        let found = problems(json!({"album": "", "year": "19x7", "rank": true, "vote_id": "a b"}));
        assert_eq!(
            found,
            [
                "name: is required",
                "album: must not be empty",
                "year: must be a whole number such as \"1997\", got \"19x7\"",
                "rank: must be a string or a number, got boolean",
                "vote_id: may contain only letters, digits, '.', '_', ':' and '-'",
            ]
        );
    }

    #[test]
    fn bounds_lengths_and_ranges() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let found = problems(json!({"name": long, "album": 5, "year": 1850, "rank": "101"}));
        assert_eq!(
            found,
            [
                "name: must be at most 100 characters, got 101",
                "album: must be a string, got a number",
                "year: must be between 1900 and 2100",
                "rank: must be between 0 and 100",
            ]
        );
        assert_eq!(
            problems(json!({"name": "a", "album": "b", "year": 1997.5, "rank": "1e3"})),
            [
                "year: must be a whole number such as 1997, got 1997.5",
                "rank: must be a decimal number such as \"9.5\", got \"1e3\"",
            ]
        );
        assert_eq!(problems(json!(["not", "an", "object"])), ["vote: must be a JSON object, got array"]);
    }

    #[test]
    fn a_whole_year_with_a_zero_fraction_is_a_year() {
        let vote = |year: serde_json::Value| json!({"name": "A", "album": "a", "year": year, "rank": 9});
        assert_eq!(Ballot::from_json(&vote(json!(1990.0))).expect("valid").year.get(), 1990);
        assert_eq!(problems(vote(json!(1990.5))), ["year: must be a whole number such as 1997, got 1990.5"]);
        assert_eq!(problems(vote(json!(1e300))), ["year: must be a whole number such as 1997, got 1e+300"]);
    }

    #[test]
    fn a_rank_is_read_alike_as_a_number_and_as_its_text() {
        // 1e-41 written out has 41 decimals: refused as a number, as the gRPC front's text would be.
        let vote = |rank: serde_json::Value| json!({"name": "A", "album": "a", "year": 1990, "rank": rank});
        assert_eq!(problems(vote(json!(1e-41))), ["rank: must have at most 40 decimals, got 1e-41"]);
        let text = 1e-40_f64.to_string();
        assert_eq!(text.split_once('.').expect("decimals").1.len(), 40);
        assert!(Ballot::from_json(&vote(json!(1e-40))).is_ok());
        assert!(Ballot::from_json(&vote(json!(text))).is_ok());
    }

    #[test]
    fn negative_zero_rank_reads_back_as_text() {
        // Found by fuzzing: `-0` was kept as -0.0, which the gRPC front re-sent as "-0" and the
        // gRPC route then refused.
        let body: serde_json::Value =
            serde_json::from_str(r#"{"name":"A","album":"a","year":1985,"rank":-0}"#).expect("JSON");
        let ballot = Ballot::from_json(&body).expect("valid");
        assert!(ballot.rank.get().is_sign_positive());
        assert_eq!(ballot.rank.get().to_string(), "0");
        let resent = BallotInput::from_proto("A", "a", "1985", &ballot.rank.get().to_string(), "", "");
        assert_eq!(Ballot::parse(&resent), Ok(ballot));
    }

    #[test]
    fn names_are_compared_in_nfc() {
        // "Hijos del Maíz" with a precomposed "í" (U+00ED) and with "i" plus U+0301.
        let composed = "Hijos del Ma\u{ed}z";
        let decomposed = "Hijos del Mai\u{301}z";
        assert_ne!(composed, decomposed);
        let vote = |album: &str| json!({"name": "Viernes Verde", "album": album, "year": 1997, "rank": 9});
        let one = Ballot::from_json(&vote(composed)).expect("valid");
        let other = Ballot::from_json(&vote(decomposed)).expect("valid");
        assert_eq!(one.album, composed);
        assert_eq!(other, one, "the two spellings are one album");
        // Through the protobuf path too, and the length is counted after normalising.
        let long = format!("{}{decomposed}", "a".repeat(MAX_NAME_CHARS - composed.chars().count()));
        assert_eq!(long.chars().count(), MAX_NAME_CHARS + 1);
        let ballot = Ballot::parse(&BallotInput::from_proto(&long, decomposed, "1997", "9", "", "")).expect("valid");
        assert_eq!(ballot.band.chars().count(), MAX_NAME_CHARS);
        assert_eq!(ballot.album, composed);
    }

    #[test]
    fn invisible_format_characters_are_refused_by_field() {
        let vote = |name: &str, album: &str| json!({"name": name, "album": album, "year": 1990, "rank": 9});
        assert_eq!(
            problems(vote("Alux Nahual\u{200b}", "Conquista")),
            ["name: contains an invisible format character U+200B"]
        );
        for (character, shown) in [
            ('\u{200d}', "U+200D"),   // zero-width joiner
            ('\u{202e}', "U+202E"),   // right-to-left override
            ('\u{2066}', "U+2066"),   // left-to-right isolate
            ('\u{feff}', "U+FEFF"),   // byte order mark
            ('\u{ad}', "U+00AD"),     // soft hyphen
            ('\u{e0041}', "U+E0041"), // tag latin capital letter A
        ] {
            let album = format!("Con{character}quista");
            assert_eq!(
                problems(vote("Alux Nahual", &album)),
                [format!("album: contains an invisible format character {shown}")]
            );
        }
        // Visible non-ASCII names are fine.
        assert!(Ballot::from_json(&vote("Bohemia Suburbana", "Las Oxidadas Ramas del Mal ñ ü 🎸")).is_ok());
        // An ASCII name skips the look-up: no ASCII character is a format character.
        assert!((0..128u8).map(char::from).all(|c| c.general_category() != GeneralCategory::Format));
        // Spaces around a format character are trimmed, the character itself is not.
        assert_eq!(problems(vote("\u{200b} Alux", "a")), ["name: contains an invisible format character U+200B"]);
    }

    #[test]
    fn proto_empty_strings_are_missing() {
        let input = BallotInput::from_proto("Band", "Album", "", "9", "", "");
        let invalid = Ballot::parse(&input).expect_err("year is missing");
        assert_eq!(invalid.to_string(), "year: is required");
    }
}
