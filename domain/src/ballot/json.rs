//! Reading a JSON body straight into the fields of its votes, with no JSON tree in between.
//!
//! The result is the one the tree would give ([`BallotInput::from_value`]): an unknown field is
//! skipped, a field sent twice keeps its last value, a value that is not a string or a number is
//! known by its type's name, and a vote that is not an object by its own. The visitor refuses
//! nothing and reads every value in full, those it drops too (serde's `IgnoredAny` would skip an
//! invalid string or an out-of-range number without looking at it), so the only errors are the
//! JSON text's own, the same ones at the same places as the tree's.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{BallotInput, Input, InvalidVote};

/// A JSON value read where a vote, a batch or a field of a vote is expected.
#[derive(Debug)]
pub(crate) enum Item {
    /// An object: a vote's fields, and the value of its `"votes"` (a batch's votes), if any.
    Object {
        fields: BallotInput,
        votes: Option<Box<Item>>,
    },
    Array(Vec<Item>),
    /// Anything else, read as one field.
    Field(Input),
}

impl Item {
    /// The vote's fields; not an object, why it is not a vote.
    pub(crate) fn into_vote(self) -> Result<BallotInput, InvalidVote> {
        match self {
            Item::Object { fields, .. } => Ok(fields),
            other => Err(InvalidVote::not_an_object(&other.into_field())),
        }
    }

    /// A batch's votes: a JSON array of them, or `{"votes": [...]}`; else `None`.
    pub(crate) fn into_batch(self) -> Option<Vec<Item>> {
        match self {
            Item::Array(votes) => Some(votes),
            Item::Object { votes: Some(votes), .. } => match *votes {
                Item::Array(votes) => Some(votes),
                _ => None,
            },
            _ => None,
        }
    }

    fn into_field(self) -> Input {
        match self {
            Item::Object { .. } => Input::Other("object"),
            Item::Array(_) => Input::Other("array"),
            Item::Field(input) => input,
        }
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Item::deserialize(deserializer).map(Item::into_field)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
        Ok(Item::Field(Input::Other("boolean")))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Item, E> {
        Ok(Item::Field(Input::Number(number.into())))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Item, E> {
        Ok(Item::Field(Input::Number(number.into())))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Item, E> {
        // As the tree reads it: a float JSON cannot hold is null.
        Ok(Item::Field(serde_json::Number::from_f64(number).map_or(Input::Other("null"), Input::Number)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Item, E> {
        Ok(Item::Field(Input::Text(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Item, E> {
        Ok(Item::Field(Input::Text(text)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Item, E> {
        Ok(Item::Field(Input::Other("null")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Item::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut fields = BallotInput::default();
        let mut votes = None;
        while let Some(key) = map.next_key::<Key>()? {
            let field = match key {
                Key::Name => &mut fields.name,
                Key::Album => &mut fields.album,
                Key::Year => &mut fields.year,
                Key::Rank => &mut fields.rank,
                Key::VoteId => &mut fields.vote_id,
                Key::VoterId => &mut fields.voter_id,
                Key::Votes => {
                    votes = Some(Box::new(map.next_value()?));
                    continue;
                }
                Key::Other => {
                    map.next_value::<Item>()?;
                    continue;
                }
            };
            *field = map.next_value()?;
        }
        Ok(Item::Object { fields, votes })
    }
}

/// An object's key, read without copying it.
enum Key {
    Name,
    Album,
    Year,
    Rank,
    VoteId,
    VoterId,
    Votes,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "name" => Key::Name,
            "album" => Key::Album,
            "year" => Key::Year,
            "rank" => Key::Rank,
            "vote_id" => Key::VoteId,
            "voter_id" => Key::VoterId,
            "votes" => Key::Votes,
            _ => Key::Other,
        })
    }
}
