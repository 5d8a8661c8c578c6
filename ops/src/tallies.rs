//! The tallies the consumers' counting script keeps in Redis: their shape ([`Counts`], which the
//! audit also fills from the log and from Kafka, and compares), and the one reader that the audit,
//! the rebuild, the certified result and the tests share, so that every one of them reads the same
//! keys ([`RedisKeys`]) the same way.
//!
//! The reads are added to a pipeline rather than sent alone, so that a caller can read the tallies
//! in one `MULTI` with what else it needs at the same moment (the rebuild reads the positions too).

use std::{collections::BTreeMap, fmt};

use bandvote_domain::{RedisKeys, Refused, VoteEvent};

/// Vote counts, keyed the way the Redis hashes are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub total: u64,
    pub bands: BTreeMap<String, u64>,
    /// `band / album` → votes.
    pub albums: BTreeMap<String, u64>,
    pub routes: BTreeMap<String, u64>,
    /// `band / album` → sum of ranks.
    pub rank_sums: BTreeMap<String, f64>,
    /// Unix second of acceptance → votes.
    pub seconds: BTreeMap<String, u64>,
    /// Refusal code → votes refused (not counted in any of the above).
    pub refused: BTreeMap<String, u64>,
}

impl Counts {
    /// Adds a logged vote: to the tallies when it was counted, to `refused` when it was not.
    pub fn add_logged(&mut self, event: &VoteEvent, refused: Option<Refused>) {
        match refused {
            None => self.add(event),
            Some(reason) => *self.refused.entry(reason.code().to_owned()).or_default() += 1,
        }
    }

    pub fn add(&mut self, event: &VoteEvent) {
        let ballot = &event.ballot;
        let album = RedisKeys::album_field(&ballot.band, &ballot.album);
        self.total += 1;
        *self.bands.entry(ballot.band.clone()).or_default() += 1;
        *self.routes.entry(event.route.as_str().to_owned()).or_default() += 1;
        *self.rank_sums.entry(album.clone()).or_default() += ballot.rank.get();
        *self.albums.entry(album).or_default() += 1;
        *self.seconds.entry(event.received_at_ms.div_euclid(1000).to_string()).or_default() += 1;
    }

    /// Every count that differs between `self` and `other`. Rank sums are floating point and
    /// compare within a relative 1e-9.
    pub fn differences(&self, other: &Counts) -> Vec<Difference> {
        let mut found = Vec::new();
        if self.total != other.total {
            found.push(Difference::new("total", "", self.total as f64, other.total as f64));
        }
        for (what, ours, theirs) in [
            ("band", &self.bands, &other.bands),
            ("album", &self.albums, &other.albums),
            ("route", &self.routes, &other.routes),
            ("second", &self.seconds, &other.seconds),
            ("refused", &self.refused, &other.refused),
        ] {
            for key in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
                let (a, b) = (ours.get(key).copied().unwrap_or(0), theirs.get(key).copied().unwrap_or(0));
                if a != b {
                    found.push(Difference::new(what, key, a as f64, b as f64));
                }
            }
        }
        let sums = &self.rank_sums;
        for key in sums.keys().chain(other.rank_sums.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (a, b) = (sums.get(key).copied().unwrap_or(0.0), other.rank_sums.get(key).copied().unwrap_or(0.0));
            if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) {
                found.push(Difference::new("rank sum", key, a, b));
            }
        }
        found
    }
}

/// One count that two sources disagree on.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub what: &'static str,
    pub key: String,
    pub expected: f64,
    pub found: f64,
}

impl Difference {
    pub fn new(what: &'static str, key: &str, expected: f64, found: f64) -> Self {
        Difference { what, key: key.to_owned(), expected, found }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() { String::new() } else { format!(" {:?}", self.key) };
        write!(f, "{}{key}: expected {}, found {}", self.what, self.expected, self.found)
    }
}

/// Adds the reads of every tally to `pipe`, whose replies [`Counts::from_replies`] reads.
pub fn reads(pipe: &mut redis::Pipeline, keys: &RedisKeys) {
    pipe.get(keys.total())
        .hgetall(keys.by_band())
        .hgetall(keys.by_album())
        .hgetall(keys.by_route())
        .hgetall(keys.rank_sum())
        .hgetall(keys.per_second())
        .hgetall(keys.refused());
}

/// How many replies [`reads`] adds.
pub const READS: usize = 7;

impl Counts {
    /// Reads the tallies in one transaction, so they are from one moment.
    pub async fn read(redis: &mut impl redis::aio::ConnectionLike, keys: &RedisKeys) -> redis::RedisResult<Self> {
        let mut pipe = redis::pipe();
        reads(pipe.atomic(), keys);
        let replies: Vec<redis::Value> = pipe.query_async(redis).await?;
        Self::from_replies(replies)
    }

    /// The tallies from the [`READS`] replies to [`reads`]. A count that is not a whole number
    /// reads as `u64::MAX` (a rank sum as NaN), so that it differs from every real count instead
    /// of stopping the reader.
    pub fn from_replies(replies: Vec<redis::Value>) -> redis::RedisResult<Self> {
        type Hash = BTreeMap<String, String>;
        let (total, bands, albums, routes, sums, seconds, refused): (Option<u64>, Hash, Hash, Hash, Hash, Hash, Hash) =
            redis::from_redis_value(redis::Value::Array(replies))?;
        let whole = |hash: Hash| hash.into_iter().map(|(k, v)| (k, v.parse().unwrap_or(u64::MAX))).collect();
        Ok(Counts {
            total: total.unwrap_or(0),
            bands: whole(bands),
            albums: whole(albums),
            routes: whole(routes),
            rank_sums: sums.into_iter().map(|(k, v)| (k, v.parse().unwrap_or(f64::NAN))).collect(),
            seconds: whole(seconds),
            refused: whole(refused),
        })
    }
}
