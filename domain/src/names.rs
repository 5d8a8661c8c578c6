//! Where votes are kept: every Redis key and MongoDB name, defined once for writer and readers.
//!
//! Redis keys (with the default prefix `bandvote`), all written by the consumer in one atomic
//! script per Kafka partition and batch, so they always agree with each other:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bandvote:votes:total` | string | votes counted |
//! | `bandvote:votes:band` | hash | band → votes |
//! | `bandvote:votes:album` | hash | `band / album` → votes |
//! | `bandvote:votes:route` | hash | route (`grpc`, `http`, `wasm`) → votes |
//! | `bandvote:leaderboard` | sorted set | band, scored by votes |
//! | `bandvote:votes:second` | hash | Unix second the vote was accepted → votes |
//! | `bandvote:votes:timeline` | stream | one entry per batch, field `votes` (capped) |
//! | `bandvote:rank:sum` | hash | `band / album` → sum of ranks |
//! | `bandvote:rank:avg` | hash | `band / album` → average rank |
//! | `bandvote:dead_letters` | string | records sent to the dead-letter topic |
//! | `bandvote:votes:refused` | hash | reason (`voting_closed`, `limit_reached`, ...) → votes refused |
//! | `bandvote:{<topic>/<partition>}:voters` | hash | `<voter_id>` → votes counted, `<voter_id>\|<band>` → for that band |
//! | `bandvote:{<topic>/<partition>}:position` | hash | `next`: the partition's first offset not yet counted; `g:<generation>`: vote ids remembered in that generation |
//! | `bandvote:{<topic>/<partition>}:resend:<generation>` | hash | digest of a vote (voter and vote id) → what became of it and its content's fingerprint (expires) |
//!
//! The per-partition keys share a Redis Cluster hash tag (`{<topic>/<partition>}`), so the keys of
//! one partition live in one slot.

/// The Redis keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub const DEFAULT_PREFIX: &'static str = "bandvote";

    pub fn new(prefix: impl Into<String>) -> Self {
        RedisKeys { prefix: prefix.into() }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn total(&self) -> String {
        self.key("votes:total")
    }
    pub fn by_band(&self) -> String {
        self.key("votes:band")
    }
    pub fn by_album(&self) -> String {
        self.key("votes:album")
    }
    pub fn by_route(&self) -> String {
        self.key("votes:route")
    }
    pub fn leaderboard(&self) -> String {
        self.key("leaderboard")
    }
    pub fn per_second(&self) -> String {
        self.key("votes:second")
    }
    pub fn timeline(&self) -> String {
        self.key("votes:timeline")
    }
    pub fn rank_sum(&self) -> String {
        self.key("rank:sum")
    }
    pub fn rank_avg(&self) -> String {
        self.key("rank:avg")
    }
    pub fn dead_letters(&self) -> String {
        self.key("dead_letters")
    }
    /// Votes refused when they were counted, by reason code ([`crate::Refused::code`]).
    pub fn refused(&self) -> String {
        self.key("votes:refused")
    }
    /// What each voter of a partition has used: field `<voter_id>` → votes counted, field
    /// `<voter_id>|<band>` → votes counted for that band (`|` is not in a voter id).
    pub fn voters(&self, topic: &str, partition: i32) -> String {
        self.key(&format!("{{{topic}/{partition}}}:voters"))
    }
    /// A Kafka partition's counting position: field `next` is the first offset of the partition
    /// that is not counted yet, fields `g:<generation>` how many vote ids each generation of the
    /// re-send window remembered (see [`ResendWindow`]).
    pub fn position(&self, topic: &str, partition: i32) -> String {
        self.key(&format!("{{{topic}/{partition}}}:position"))
    }
    /// The digests ([`RedisKeys::resend_member`]) of the vote ids a partition counted in one
    /// generation of the re-send window.
    pub fn resend(&self, topic: &str, partition: i32, generation: i64) -> String {
        self.key(&format!("{{{topic}/{partition}}}:resend:{generation}"))
    }

    /// What the re-send memory holds for a vote: the first 16 bytes of the SHA-256 of its voter (when
    /// it names one) and its vote id, so that every entry has the same small size whatever the client
    /// chose, and one voter's `vote_id` never stands for another's. Two different votes share an entry
    /// with a probability of about n² / 2¹²⁹ for n votes, below 10⁻¹⁹ for ten billion.
    pub fn resend_member(voter_id: Option<&str>, vote_id: &str) -> [u8; 16] {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update(b"bandvote.resend.v2\0");
        for part in [voter_id.unwrap_or(""), vote_id] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let mut member = [0; 16];
        member.copy_from_slice(&hash.finalize()[..16]);
        member
    }

    /// The field that names an album in the album hashes: `<band> / <album>`, with every `\\` and
    /// `/` of the band name escaped by a `\\`, so the first unescaped `/` is always the separator
    /// and band `A / B` with album `C` never meets band `A` with album `B / C`. Names without
    /// either character read as they are.
    pub fn album_field(band: &str, album: &str) -> String {
        let mut field = String::with_capacity(band.len() + album.len() + 3);
        for c in band.chars() {
            if matches!(c, '\\' | '/') {
                field.push('\\');
            }
            field.push(c);
        }
        field.push_str(" / ");
        field.push_str(album);
        field
    }

    /// The band and album of an [`RedisKeys::album_field`], or `None` when `field` is not one.
    pub fn split_album_field(field: &str) -> Option<(String, String)> {
        let mut band = String::new();
        let mut chars = field.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => band.push(chars.next()?.1),
                '/' => {
                    let band = band.strip_suffix(' ')?.to_owned();
                    let album = field[at + 1..].strip_prefix(' ')?.to_owned();
                    return Some((band, album));
                }
                c => band.push(c),
            }
        }
        None
    }
}

/// How the re-send window is cut into generations.
///
/// A vote id is remembered in the generation of the time ingest accepted it
/// (`received_at_ms / generation_ms`). A generation lasts a third of the window; a vote is
/// checked against its own generation, the [`ResendWindow::BEHIND`] before it and the one after it
/// (for ingest clocks that disagree), so a re-send accepted up to `window` after the original is
/// always recognised, one up to `window + generation_ms` may be. Each generation is one Redis set
/// that expires `window` after the generation ends: memory holds at most `4/3 × window` of votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendWindow {
    window_ms: i64,
}

impl ResendWindow {
    /// Earlier generations a vote is checked against.
    pub const BEHIND: i64 = 3;

    /// A window of `window_ms` milliseconds (at least [`ResendWindow::BEHIND`]).
    pub fn new(window_ms: i64) -> Self {
        ResendWindow { window_ms: window_ms.max(Self::BEHIND) }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// How long one generation lasts.
    pub fn generation_ms(&self) -> i64 {
        (self.window_ms + Self::BEHIND - 1) / Self::BEHIND
    }

    /// The generation a vote accepted at `received_at_ms` is remembered in.
    pub fn generation_of(&self, received_at_ms: i64) -> i64 {
        received_at_ms.div_euclid(self.generation_ms())
    }

    /// The generations a vote of generation `generation` is looked up in, oldest first.
    pub fn lookups(&self, generation: i64) -> std::ops::RangeInclusive<i64> {
        generation - Self::BEHIND..=generation + 1
    }
}

impl Default for RedisKeys {
    fn default() -> Self {
        RedisKeys::new(Self::DEFAULT_PREFIX)
    }
}

/// The MongoDB vote log: one document per vote, `_id` = its log id (`vote_id`, or
/// `<voter_id>/<vote_id>`). The document is `LogDocument` (module `log_document`, feature `bson`):
/// `name`, `album`, `year` (int), `rank` (double), `voter_id` (when sent), `route`,
/// `received_at` (date), `kafka.partition`, `kafka.offset`, `status`, `reason` (when refused),
/// `logged_at` (date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoNames {
    pub database: String,
    pub collection: String,
}

impl MongoNames {
    pub const DEFAULT_DATABASE: &'static str = "bandvote";
    pub const VOTES: &'static str = "votes";
    /// The collection of certified results; the one `bandvote-result` writes has `_id`
    /// [`MongoNames::FINAL_RESULT`].
    pub const RESULTS: &'static str = "results";
    pub const FINAL_RESULT: &'static str = "final";

    /// The indexes of the vote log: (name, keys in order, descending?). Newest first is
    /// `received_at` descending with `_id` as the tie-breaker; the filters lead with their field.
    /// `logged_order` lets the tallies read only the votes logged since their last computation.
    pub const INDEXES: &'static [(&'static str, &'static [(&'static str, i32)])] = &[
        ("newest_first", &[("received_at", -1), ("_id", -1)]),
        ("band_newest_first", &[("name", 1), ("received_at", -1), ("_id", -1)]),
        ("album_newest_first", &[("name", 1), ("album", 1), ("received_at", -1), ("_id", -1)]),
        ("route_newest_first", &[("route", 1), ("received_at", -1), ("_id", -1)]),
        ("logged_order", &[("logged_at", 1)]),
    ];

    pub fn new(database: impl Into<String>) -> Self {
        MongoNames { database: database.into(), collection: Self::VOTES.to_owned() }
    }
}

impl Default for MongoNames {
    fn default() -> Self {
        MongoNames::new(Self::DEFAULT_DATABASE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn album_fields_cannot_collide_and_read_back() {
        let ambiguous =
            [("A / B", "C"), ("A", "B / C"), ("A /", "B"), ("A", "/ B"), ("A\\", "B"), ("AC/DC", "Back in Black")];
        let fields: Vec<String> = ambiguous.iter().map(|(band, album)| RedisKeys::album_field(band, album)).collect();
        let distinct: std::collections::BTreeSet<&String> = fields.iter().collect();
        assert_eq!(distinct.len(), fields.len(), "{fields:?}");
        for ((band, album), field) in ambiguous.iter().zip(&fields) {
            assert_eq!(RedisKeys::split_album_field(field), Some((band.to_string(), album.to_string())), "{field}");
        }
        // The names of a contest without slashes read as they always did.
        assert_eq!(RedisKeys::album_field("Bohemia Suburbana", "Mil palabras"), "Bohemia Suburbana / Mil palabras");
        assert_eq!(RedisKeys::split_album_field("no separator"), None);
    }

    #[test]
    fn partition_keys_share_one_cluster_hash_tag() {
        let keys = RedisKeys::new("bandvote");
        assert_eq!(keys.position("votes", 3), "bandvote:{votes/3}:position");
        assert_eq!(keys.resend("votes", 3, 17), "bandvote:{votes/3}:resend:17");
    }

    #[test]
    fn resend_members_are_fixed_size_and_differ_per_id() {
        let a = RedisKeys::resend_member(None, "phone-502-1");
        assert_eq!(a, RedisKeys::resend_member(None, "phone-502-1"));
        assert_ne!(a, RedisKeys::resend_member(None, "phone-502-2"));
        assert_ne!(a, RedisKeys::resend_member(None, ""));
        assert_ne!(a, RedisKeys::resend_member(Some("voter-b"), "phone-502-1"), "scoped by voter");
        assert_ne!(RedisKeys::resend_member(Some("ab"), "c"), RedisKeys::resend_member(Some("a"), "bc"));
    }

    #[test]
    fn a_window_is_three_generations_and_a_vote_is_looked_up_in_five() {
        let window = ResendWindow::new(24 * 3_600_000);
        assert_eq!(window.generation_ms(), 8 * 3_600_000);
        assert_eq!(window.generation_of(0), 0);
        assert_eq!(window.generation_of(8 * 3_600_000 - 1), 0);
        assert_eq!(window.generation_of(8 * 3_600_000), 1);
        assert_eq!(window.generation_of(-1), -1);
        assert_eq!(window.lookups(10), 7..=11);
        // An original accepted at t is found by a re-send accepted at any time up to t + window.
        for t in [0, 1, 8 * 3_600_000 - 1, 13 * 3_600_000] {
            let original = window.generation_of(t);
            for later in [t, t + window.window_ms() / 2, t + window.window_ms()] {
                assert!(window.lookups(window.generation_of(later)).contains(&original), "{t} {later}");
            }
            // A re-send stamped a little earlier by another ingest's clock.
            assert!(window.lookups(window.generation_of(t - 1000)).contains(&original));
        }
        assert_eq!(ResendWindow::new(2000).generation_ms(), 667);
        assert_eq!(ResendWindow::new(0).generation_ms(), 1);
    }
}
