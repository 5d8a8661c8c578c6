//! The contest file: which bands and albums run, when voting is open, and what one voter may do.
//!
//! ```json
//! {
//!   "name": "Gran final 2026",
//!   "bands": [{"name": "Alux Nahual", "albums": ["Alux Nahual", "Conquista"]}],
//!   "voting": {"opens": "2026-12-05T20:00:00-06:00", "closes": "2026-12-05T23:15:00-06:00"},
//!   "voters": {"required": true, "max_votes": 3, "max_votes_per_band": 1}
//! }
//! ```
//!
//! Every part is optional: without `bands` any band and album may be voted for, without `voting`
//! the contest never closes, without `voters` a vote needs no `voter_id` and nobody is limited,
//! like the original system. A file of only `bands` is the roster format of earlier versions.
//! A per-voter rule needs every vote to name its voter, so `max_votes` or `max_votes_per_band`
//! make `voter_id` required (and `"required": false` with a rule is refused: votes without a
//! voter would escape the rule).
//!
//! Ingest refuses a vote outside the window (`voting_closed`) and, when it can see that the voter
//! has used up the rule, one over it (`limit_reached`); the consumer applies the rule again, exactly,
//! when it counts: a vote that passed ingest in a race is logged as refused and never counted.

use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    ballot::{Ballot, FieldError},
    roster::{Roster, RosterError},
};

/// A contest as read from its file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contest {
    /// A name for people (the certified result carries it).
    pub name: Option<String>,
    roster: Option<Roster>,
    pub window: Window,
    pub voters: VoterRule,
}

/// When votes are taken: from `opens` (inclusive) to `closes` (exclusive), by ingest's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub opens: Option<Instant>,
    pub closes: Option<Instant>,
}

/// A moment of the window: milliseconds since the Unix epoch, and the text the file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instant {
    pub ms: i64,
    pub text: String,
}

/// What one voter may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoterRule {
    /// Every vote must carry a `voter_id`.
    pub required: bool,
    /// Votes counted per voter in the whole contest, at most.
    pub max_votes: Option<u32>,
    /// Votes counted per voter for one band, at most.
    pub max_votes_per_band: Option<u32>,
}

impl VoterRule {
    /// Whether there is anything to count per voter.
    pub fn limits(&self) -> bool {
        self.max_votes.is_some() || self.max_votes_per_band.is_some()
    }

    /// The rule in words, for refusals and the certified result.
    pub fn describe(&self) -> String {
        match (self.max_votes, self.max_votes_per_band) {
            (Some(all), Some(band)) => format!("at most {all} votes per voter, and {band} per band"),
            (Some(all), None) => format!("at most {all} votes per voter"),
            (None, Some(band)) => format!("at most {band} votes per voter for one band"),
            (None, None) => "no limit per voter".to_owned(),
        }
    }
}

impl Window {
    pub fn contains(&self, ms: i64) -> bool {
        self.opens.as_ref().is_none_or(|o| ms >= o.ms) && self.closes.as_ref().is_none_or(|c| ms < c.ms)
    }

    /// `voting opens at …` / `voting closed at …`, as the refusal says it.
    pub fn describe(&self) -> String {
        match (&self.opens, &self.closes) {
            (Some(o), Some(c)) => format!("voting is open from {} until {}", o.text, c.text),
            (Some(o), None) => format!("voting opens at {}", o.text),
            (None, Some(c)) => format!("voting closed at {}", c.text),
            (None, None) => "voting is open".to_owned(),
        }
    }
}

/// Why a vote was refused when it was counted. The consumer keeps it with the vote in the log
/// and counts it in Redis (`votes:refused`); ingest answers the same codes when it can tell first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refused {
    /// Accepted outside the voting window.
    VotingClosed,
    /// The voter had used every vote the contest allows.
    LimitReached,
    /// The voter had used every vote the contest allows for this band.
    BandLimitReached,
    /// The voter (or, without one, the client) used this `vote_id` before for a different vote.
    VoteIdConflict,
}

impl Refused {
    pub const ALL: [Refused; 4] =
        [Refused::VotingClosed, Refused::LimitReached, Refused::BandLimitReached, Refused::VoteIdConflict];

    /// The code in answers, the log and Redis.
    pub fn code(self) -> &'static str {
        match self {
            Refused::VotingClosed => "voting_closed",
            Refused::LimitReached => "limit_reached",
            Refused::BandLimitReached => "band_limit_reached",
            Refused::VoteIdConflict => "vote_id_conflict",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Refused::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The one-letter mark the counting script keeps in the re-send memory.
    pub fn mark(self) -> char {
        match self {
            Refused::VotingClosed => 'W',
            Refused::LimitReached => 'L',
            Refused::BandLimitReached => 'B',
            Refused::VoteIdConflict => 'X',
        }
    }

    pub fn from_mark(mark: char) -> Option<Self> {
        Refused::ALL.into_iter().find(|r| r.mark() == mark)
    }
}

/// What is wrong with a contest file.
#[derive(Debug, thiserror::Error)]
pub enum ContestError {
    #[error("the contest file is not valid JSON of the expected form: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Roster(#[from] RosterError),
    #[error("voting.{field}: {text:?} is not an RFC 3339 time such as 2026-12-05T20:00:00-06:00 ({problem})")]
    Time { field: &'static str, text: String, problem: String },
    #[error("voting.closes ({closes}) must be after voting.opens ({opens})")]
    ClosesBeforeOpens { opens: String, closes: String },
    #[error("voters.{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "voters.required is false but a per-voter rule is set: a vote without a voter_id would escape it (leave `required` out or set it to true)"
    )]
    RuleWithoutVoters,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContestFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    bands: Option<serde_json::Value>,
    #[serde(default)]
    voting: Option<VotingFile>,
    #[serde(default)]
    voters: Option<VotersFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VotingFile {
    #[serde(default)]
    opens: Option<String>,
    #[serde(default)]
    closes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VotersFile {
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    max_votes: Option<u32>,
    #[serde(default)]
    max_votes_per_band: Option<u32>,
}

impl Contest {
    pub fn from_json(text: &str) -> Result<Self, ContestError> {
        let file: ContestFile = serde_json::from_str(text)?;
        let roster = match file.bands {
            Some(bands) => Some(Roster::from_json(&serde_json::json!({ "bands": bands }).to_string())?),
            None => None,
        };
        let instant = |field: &'static str, text: Option<String>| -> Result<Option<Instant>, ContestError> {
            let Some(text) = text else { return Ok(None) };
            let parsed = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| ContestError::Time {
                field,
                text: text.clone(),
                problem: e.to_string(),
            })?;
            Ok(Some(Instant { ms: (parsed.unix_timestamp_nanos() / 1_000_000) as i64, text }))
        };
        let voting = file.voting.unwrap_or(VotingFile { opens: None, closes: None });
        let window = Window { opens: instant("opens", voting.opens)?, closes: instant("closes", voting.closes)? };
        if let (Some(o), Some(c)) = (&window.opens, &window.closes)
            && c.ms <= o.ms
        {
            return Err(ContestError::ClosesBeforeOpens { opens: o.text.clone(), closes: c.text.clone() });
        }
        let voters = file.voters.unwrap_or(VotersFile { required: None, max_votes: None, max_votes_per_band: None });
        for (field, value) in [("max_votes", voters.max_votes), ("max_votes_per_band", voters.max_votes_per_band)] {
            if value == Some(0) {
                return Err(ContestError::Zero(field));
            }
        }
        let mut rule =
            VoterRule { required: false, max_votes: voters.max_votes, max_votes_per_band: voters.max_votes_per_band };
        rule.required = match voters.required {
            Some(false) if rule.limits() => return Err(ContestError::RuleWithoutVoters),
            Some(required) => required,
            None => rule.limits(),
        };
        Ok(Contest { name: file.name, roster, window, voters: rule })
    }

    /// A contest of only a roster (the earlier file format).
    pub fn from_roster(roster: Roster) -> Self {
        Contest { roster: Some(roster), ..Contest::default() }
    }

    pub fn roster(&self) -> Option<&Roster> {
        self.roster.as_ref()
    }

    /// Checks a valid vote's fields against the contest: the roster, and `voter_id` when the rule
    /// needs one. The window is checked against the acceptance time ([`Window::contains`]).
    pub fn check_fields(&self, ballot: &Ballot) -> Result<(), FieldError> {
        if let Some(roster) = &self.roster {
            roster.check(ballot)?;
        }
        if self.voters.required && ballot.voter_id.is_none() {
            return Err(FieldError {
                field: "voter_id",
                problem: format!("is required in this contest ({})", self.voters.describe()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vote(voter: Option<&str>) -> Ballot {
        let mut input = json!({"name": "Alux Nahual", "album": "Conquista", "year": "1990", "rank": "9"});
        if let Some(voter) = voter {
            input["voter_id"] = json!(voter);
        }
        Ballot::from_json(&input).expect("a valid vote")
    }

    #[test]
    fn a_full_contest_file_reads_and_checks_window_roster_and_voter() {
        let contest = Contest::from_json(include_str!("../../contest.example.json")).expect("the example parses");
        let opens = contest.window.opens.clone().expect("opens").ms;
        let closes = contest.window.closes.clone().expect("closes").ms;
        assert!(contest.voters.required && contest.voters.limits());
        assert_eq!(contest.check_fields(&vote(Some("phone:502"))), Ok(()));
        assert!(contest.window.contains(opens) && contest.window.contains(closes - 1));
        assert!(!contest.window.contains(closes) && !contest.window.contains(opens - 1));
        let missing = contest.check_fields(&vote(None)).expect_err("no voter");
        assert!(missing.to_string().starts_with("voter_id: is required in this contest (at most"), "{missing}");
    }

    #[test]
    fn a_roster_file_is_a_contest_that_is_always_open_and_limits_nobody() {
        let contest = Contest::from_json(include_str!("../../roster.example.json")).expect("a roster parses");
        assert!(contest.roster().is_some());
        assert_eq!(contest.check_fields(&vote(None)), Ok(()));
        assert!(contest.window.contains(0) && contest.window.contains(i64::MAX));
        assert_eq!(Contest::from_json("{}").expect("empty").check_fields(&vote(None)), Ok(()));
    }

    #[test]
    fn a_bad_file_says_what_is_wrong() {
        let error = |text: &str| Contest::from_json(text).expect_err("refused").to_string();
        assert!(
            error(r#"{"voting": {"opens": "tomorrow"}}"#).starts_with("voting.opens: \"tomorrow\" is not an RFC 3339")
        );
        assert!(
            error(r#"{"voting": {"opens": "2026-12-05T20:00:00Z", "closes": "2026-12-05T19:00:00Z"}}"#)
                .starts_with("voting.closes (2026-12-05T19:00:00Z) must be after")
        );
        assert_eq!(error(r#"{"voters": {"max_votes": 0}}"#), "voters.max_votes must be at least 1");
        assert!(error(r#"{"voters": {"required": false, "max_votes": 3}}"#).starts_with("voters.required is false"));
        assert!(error(r#"{"voter": {}}"#).contains("unknown field `voter`"));
        assert!(error(r#"{"bands": []}"#).contains("no bands"));
    }

    #[test]
    fn refusal_codes_and_marks_round_trip() {
        for refused in Refused::ALL {
            assert_eq!(Refused::from_code(refused.code()), Some(refused));
            assert_eq!(Refused::from_mark(refused.mark()), Some(refused));
            assert_ne!(refused.mark(), 'C', "C marks a counted vote");
        }
    }

    #[test]
    fn the_window_names_its_times() {
        let contest = Contest::from_json(
            r#"{"voting": {"opens": "2026-12-05T20:00:00-06:00", "closes": "2026-12-05T23:15:00-06:00"}}"#,
        )
        .expect("parses");
        assert!(!contest.window.contains(0));
        assert_eq!(
            contest.window.describe(),
            "voting is open from 2026-12-05T20:00:00-06:00 until 2026-12-05T23:15:00-06:00"
        );
        assert_eq!(contest.window.opens.expect("opens").ms, 1_796_522_400_000);
    }
}
