//! The optional contest roster: the bands in the contest and their albums.
//!
//! When one is configured, a vote for a band or album that is not on it is refused at the edge.
//! The file is JSON: `{"bands": [{"name": "Alux Nahual", "albums": ["Alux Nahual", "Conquista"]}]}`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::ballot::{Ballot, FieldError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    bands: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("the roster is not valid JSON of the form {{\"bands\": [{{\"name\": ..., \"albums\": [...]}}]}}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the roster lists no bands")]
    Empty,
    #[error("band {0:?} in the roster lists no albums")]
    NoAlbums(String),
    #[error("{what} {name:?} in the roster {problem}")]
    BadName { what: &'static str, name: String, problem: String },
}

#[derive(Deserialize)]
struct RosterFile {
    bands: Vec<BandEntry>,
}

#[derive(Deserialize)]
struct BandEntry {
    name: String,
    albums: Vec<String>,
}

impl Roster {
    pub fn from_json(text: &str) -> Result<Self, RosterError> {
        let file: RosterFile = serde_json::from_str(text)?;
        if file.bands.is_empty() {
            return Err(RosterError::Empty);
        }
        let mut bands = BTreeMap::new();
        // Names are compared as votes are: the same normal form, the same rules.
        let normal = |what, name: &str| {
            crate::ballot::normal_name(name).map_err(|problem| RosterError::BadName {
                what,
                name: name.to_owned(),
                problem,
            })
        };
        for band in file.bands {
            if band.albums.is_empty() {
                return Err(RosterError::NoAlbums(band.name));
            }
            let albums = band.albums.iter().map(|a| normal("album", a)).collect::<Result<_, _>>()?;
            bands.insert(normal("band", &band.name)?, albums);
        }
        Ok(Roster { bands })
    }

    /// Refuses a band that is not in the contest, or an album that is not that band's.
    pub fn check(&self, ballot: &Ballot) -> Result<(), FieldError> {
        let Some(albums) = self.bands.get(&ballot.band) else {
            return Err(FieldError {
                field: "name",
                problem: format!("{:?} is not a band in this contest", ballot.band),
            });
        };
        if !albums.contains(&ballot.album) {
            return Err(FieldError {
                field: "album",
                problem: format!("{:?} is not an album of {:?} in this contest", ballot.album, ballot.band),
            });
        }
        Ok(())
    }

    pub fn bands(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.bands.iter().map(|(band, albums)| (band.as_str(), albums.iter().map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn checks_band_then_album() {
        let roster =
            Roster::from_json(r#"{"bands": [{"name": "Alux Nahual", "albums": ["Conquista"]}]}"#).expect("roster");
        let vote = |band: &str, album: &str| {
            Ballot::from_json(&json!({"name": band, "album": album, "year": "1990", "rank": "5"})).expect("valid")
        };
        assert_eq!(roster.check(&vote("Alux Nahual", "Conquista")), Ok(()));
        assert_eq!(
            roster.check(&vote("Nobody", "Conquista")).expect_err("unknown").to_string(),
            "name: \"Nobody\" is not a band in this contest"
        );
        assert_eq!(roster.check(&vote("Alux Nahual", "Other")).expect_err("unknown").field, "album");
    }

    #[test]
    fn roster_names_are_in_the_normal_form_votes_are_compared_in() {
        // "Resistiré" written with a combining accent, as some editors save it.
        let roster =
            Roster::from_json(r#"{"bands": [{"name": "Malacates", "albums": ["Resistire\u0301"]}]}"#).expect("roster");
        let vote = Ballot::from_json(&json!({"name": "Malacates", "album": "Resistiré", "year": "1990", "rank": "5"}))
            .expect("valid");
        assert_eq!(roster.check(&vote), Ok(()));
        let hidden = Roster::from_json(r#"{"bands": [{"name": "Alux\u200bNahual", "albums": ["A"]}]}"#);
        assert!(matches!(hidden, Err(RosterError::BadName { what: "band", .. })), "{hidden:?}");
    }

    #[test]
    fn the_example_roster_is_valid() {
        let roster = Roster::from_json(include_str!("../../roster.example.json")).expect("the example parses");
        assert!(roster.bands().count() >= 2);
    }

    #[test]
    fn refuses_broken_files() {
        assert!(matches!(Roster::from_json("{}"), Err(RosterError::Malformed(_))));
        assert!(matches!(Roster::from_json(r#"{"bands": []}"#), Err(RosterError::Empty)));
        assert!(matches!(
            Roster::from_json(r#"{"bands": [{"name": "A", "albums": []}]}"#),
            Err(RosterError::NoAlbums(_))
        ));
    }
}
