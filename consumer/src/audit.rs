//! The audit: recount every vote from the MongoDB log (and, while Kafka still holds them, from the
//! topic) and compare with the live tallies in Redis; rebuild Redis from the log after it lost data
//! ([`crate::rebuild`]).

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    time::Duration,
};

use bandvote_domain::{LogDocument, RedisKeys, VoteEvent};
use bandvote_ops::config::KafkaArgs;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, RawBsonRef, RawDocument, RawDocumentBuf, doc};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use redis::aio::ConnectionManager;

use crate::{
    log_store::{KafkaVote, LogStore},
    rebuild::{RebuildSettings, Rebuilt},
    tally::Tally,
};

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
    pub fn add_logged(&mut self, vote: &KafkaVote) {
        match vote.refused {
            None => self.add(&vote.event),
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
    fn new(what: &'static str, key: &str, expected: f64, found: f64) -> Self {
        Difference { what, key: key.to_owned(), expected, found }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() { String::new() } else { format!(" {:?}", self.key) };
        write!(f, "{}{key}: expected {}, found {}", self.what, self.expected, self.found)
    }
}

/// What reading the log found.
#[derive(Debug, Default)]
pub struct LogCount {
    pub counts: Counts,
    /// Documents that are not a valid vote (`_id` and why).
    pub unreadable: Vec<(String, String)>,
    /// Counted votes per voter, and per voter and band, for the contest's rule.
    pub voters: BTreeMap<String, u64>,
    pub voter_bands: BTreeMap<(String, String), u64>,
}

impl LogCount {
    /// Voters whose counted votes break the contest's rule.
    pub fn rule_violations(&self, rule: &bandvote_domain::VoterRule) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(max) = rule.max_votes {
            for (voter, votes) in self.voters.iter().filter(|(_, v)| **v > u64::from(max)) {
                found.push(format!("voter {voter:?} has {votes} counted votes, the rule allows {max}"));
            }
        }
        if let Some(max) = rule.max_votes_per_band {
            for ((voter, band), votes) in self.voter_bands.iter().filter(|(_, v)| **v > u64::from(max)) {
                found.push(format!("voter {voter:?} has {votes} counted votes for {band:?}, the rule allows {max}"));
            }
        }
        found
    }
}

/// Reads the vote log document by document, in `_id` order.
pub struct LogReader {
    cursor: mongodb::Cursor<RawDocumentBuf>,
}

impl LogReader {
    pub async fn open(log: &LogStore) -> mongodb::error::Result<Self> {
        let cursor = Self::documents(log).find(doc! {}).batch_size(5000).await?;
        Ok(LogReader { cursor })
    }

    /// The same, sorted by `_id` (the order of the certified result's digest).
    pub async fn open_sorted(log: &LogStore) -> mongodb::error::Result<Self> {
        let cursor = Self::documents(log).find(doc! {}).sort(doc! {"_id": 1}).batch_size(5000).await?;
        Ok(LogReader { cursor })
    }

    /// The log as raw documents: one that is not a [`LogDocument`] is reported, not fatal.
    fn documents(log: &LogStore) -> mongodb::Collection<RawDocumentBuf> {
        log.votes().clone_with_type()
    }

    /// The next logged vote, or the `_id` of a document that is not a valid vote and why.
    pub async fn next(&mut self) -> mongodb::error::Result<Option<Result<VoteEvent, (String, String)>>> {
        Ok(self.next_logged().await?.map(|vote| vote.map(|v| v.event)))
    }

    /// The next logged vote with the Kafka record it was read from.
    pub async fn next_logged(&mut self) -> mongodb::error::Result<Option<Result<KafkaVote, (String, String)>>> {
        Ok(self.cursor.try_next().await?.map(|document| {
            let unreadable = |why: String| (id_of(&document), why);
            let logged: LogDocument = bson::from_slice(document.as_bytes()).map_err(|e| unreadable(e.to_string()))?;
            let event = logged.event().map_err(unreadable)?;
            let refused = logged.refused().map_err(unreadable)?;
            Ok(KafkaVote { event, partition: logged.kafka.partition, offset: logged.kafka.offset, refused })
        }))
    }
}

/// Recounts the vote log.
pub async fn count_log(log: &LogStore) -> mongodb::error::Result<LogCount> {
    let mut reader = LogReader::open(log).await?;
    let mut found = LogCount::default();
    while let Some(vote) = reader.next_logged().await? {
        match vote {
            Ok(vote) => {
                found.counts.add_logged(&vote);
                if let (None, Some(voter)) = (vote.refused, &vote.event.ballot.voter_id) {
                    *found.voters.entry(voter.clone()).or_default() += 1;
                    *found.voter_bands.entry((voter.clone(), vote.event.ballot.band.clone())).or_default() += 1;
                }
            }
            Err(unreadable) => found.unreadable.push(unreadable),
        }
    }
    Ok(found)
}

fn id_of(document: &RawDocument) -> String {
    match document.get("_id") {
        Ok(Some(RawBsonRef::String(id))) => id.to_owned(),
        Ok(Some(other)) => {
            Bson::try_from(other.to_raw_bson()).map_or_else(|_| format!("{other:?}"), |id| id.to_string())
        }
        Ok(None) | Err(_) => "(no _id)".to_owned(),
    }
}

/// Reads the tallies from Redis in one transaction, so they are from one moment.
pub async fn count_redis(redis: &ConnectionManager, keys: &RedisKeys) -> redis::RedisResult<Counts> {
    let mut pipe = redis::pipe();
    tally_reads(pipe.atomic(), keys);
    let replies: Vec<redis::Value> = pipe.query_async(&mut redis.clone()).await?;
    tallies_from(replies)
}

/// Adds the reads of every tally to `pipe`, for [`tallies_from`].
pub(crate) fn tally_reads(pipe: &mut redis::Pipeline, keys: &RedisKeys) {
    pipe.get(keys.total())
        .hgetall(keys.by_band())
        .hgetall(keys.by_album())
        .hgetall(keys.by_route())
        .hgetall(keys.rank_sum())
        .hgetall(keys.per_second())
        .hgetall(keys.refused());
}

/// The tallies from the replies to [`tally_reads`].
pub(crate) fn tallies_from(replies: Vec<redis::Value>) -> redis::RedisResult<Counts> {
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

/// The leaderboard's bands whose score differs from the band hash.
pub async fn leaderboard_differences(
    redis: &ConnectionManager,
    keys: &RedisKeys,
    bands: &BTreeMap<String, u64>,
) -> redis::RedisResult<Vec<Difference>> {
    let board: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys.leaderboard())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis.clone())
        .await?;
    let board: BTreeMap<_, _> = board.into_iter().collect();
    let mut found = Vec::new();
    for band in bands.keys().chain(board.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = (bands.get(band).copied().unwrap_or(0) as f64, board.get(band).copied().unwrap_or(0.0));
        if a != b {
            found.push(Difference::new("leaderboard", band, a, b));
        }
    }
    Ok(found)
}

/// What replaying the topic found.
#[derive(Debug, Default)]
pub struct KafkaReplay {
    /// Counts over distinct vote ids.
    pub counts: Counts,
    pub records: u64,
    /// Records that carried a vote id already seen (a client or producer re-send).
    pub repeated: u64,
    /// Records that are not vote events (they went to the dead-letter topic).
    pub not_votes: u64,
    /// Partitions whose oldest records are gone (retention): partition → first offset still held.
    pub truncated: BTreeMap<i32, i64>,
}

/// Reads the votes topic from its first held record to its end, without joining any group.
pub fn replay_kafka(kafka: &KafkaArgs, within: Duration) -> anyhow::Result<KafkaReplay> {
    let consumer: BaseConsumer = kafka
        .client_config("bandvote-audit")
        .set("group.id", "bandvote-audit")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic)
        .ok_or_else(|| anyhow::anyhow!("topic {} not found", kafka.topic))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut replay = KafkaReplay::default();
    for partition in topic.partitions() {
        let id = partition.id();
        let (low, high) = consumer.fetch_watermarks(&kafka.topic, id, Duration::from_secs(10))?;
        if low > 0 {
            replay.truncated.insert(id, low);
        }
        if high > low {
            assignment.add_partition_offset(&kafka.topic, id, Offset::Offset(low))?;
            ends.insert(id, high);
        }
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + within;
    let mut seen = HashSet::new();
    while !ends.is_empty() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the topic was not read to its end within {within:?}");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message?;
        let partition = message.partition();
        if ends.get(&partition).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&partition);
        }
        replay.records += 1;
        match VoteEvent::decode(message.payload()) {
            Ok(event) => {
                if seen.insert(event.vote_id.as_str().to_owned()) {
                    replay.counts.add(&event);
                } else {
                    replay.repeated += 1;
                }
            }
            Err(_) => replay.not_votes += 1,
        }
    }
    Ok(replay)
}

/// The `bandvote-audit` command.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-audit",
    version,
    about = "Recounts the votes in the MongoDB log (and the Kafka topic) and compares them with the Redis tallies; \
             rebuilds the tallies from the log after Redis lost data. Exits 0 when every count agrees, 1 when one \
             differs, 2 when a store cannot be read."
)]
pub struct AuditConfig {
    /// Also read the votes topic from its first held record and compare its distinct votes with the log.
    #[arg(long)]
    pub replay_kafka: bool,
    /// Longest time the Kafka replay may take.
    #[arg(long, default_value = "300s", value_parser = bandvote_ops::config::parse_duration)]
    pub replay_timeout: Duration,
    /// First make the Redis tallies equal to the log for every record Redis counted (restoring what
    /// it lost, at any age, and nothing when it lost nothing), then audit. Safe while consumers run.
    #[arg(long)]
    pub rebuild: bool,
    /// The consumers' group: the rebuild waits until it has committed (and so logged) everything Redis
    /// counted.
    #[arg(long = "kafka-group", env = "KAFKA_GROUP", default_value = "bandvote-consumer")]
    pub group: String,
    /// Longest time the rebuild waits for the log to hold everything Redis counted.
    #[arg(long, default_value = "60s", value_parser = bandvote_ops::config::parse_duration)]
    pub log_wait: Duration,
    #[command(flatten)]
    pub contest: bandvote_ops::config::ContestArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub redis: bandvote_ops::config::RedisArgs,
    #[command(flatten)]
    pub mongo: bandvote_ops::config::MongoArgs,
}

/// What one audit found.
#[derive(Debug, Default)]
pub struct Report {
    pub log: LogCount,
    pub redis: Counts,
    /// Redis against the log, then the leaderboard against the band hash.
    pub redis_differences: Vec<Difference>,
    pub kafka: Option<KafkaReplay>,
    pub kafka_differences: Vec<Difference>,
    /// What the rebuild changed.
    pub rebuilt: Option<Rebuilt>,
    /// Voters whose counted votes (in the log) break the contest's rule.
    pub rule_violations: Vec<String>,
}

impl Report {
    /// Every count agrees and every logged document is a vote.
    pub fn agrees(&self) -> bool {
        self.redis_differences.is_empty()
            && self.kafka_differences.is_empty()
            && self.log.unreadable.is_empty()
            && self.rule_violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = &self.log.counts;
        if let Some(rebuilt) = &self.rebuilt {
            writeln!(f, "{rebuilt}")?;
        }
        writeln!(
            f,
            "log:   {} votes ({} bands, {} albums), {} documents that are not votes",
            counts.total,
            counts.bands.len(),
            counts.albums.len(),
            self.log.unreadable.len()
        )?;
        for (id, why) in self.log.unreadable.iter().take(20) {
            writeln!(f, "  {id}: {why}")?;
        }
        let refused: u64 = counts.refused.values().sum();
        if refused > 0 {
            writeln!(f, "       {refused} refused votes {:?}", counts.refused)?;
        }
        writeln!(f, "redis: {} votes", self.redis.total)?;
        if self.rule_violations.is_empty() {
            writeln!(f, "the contest's rule: kept by every voter")?;
        } else {
            writeln!(f, "the contest's rule: {} violations", self.rule_violations.len())?;
            for violation in self.rule_violations.iter().take(50) {
                writeln!(f, "  {violation}")?;
            }
        }
        if let Some(kafka) = &self.kafka {
            let held = if kafka.truncated.is_empty() {
                "every record since the topic began".to_owned()
            } else {
                format!("from offsets {:?} (older records are gone; counts cover only these)", kafka.truncated)
            };
            writeln!(
                f,
                "kafka: {} records, {} distinct votes, {} repeated vote ids, {} not votes; {held}",
                kafka.records, kafka.counts.total, kafka.repeated, kafka.not_votes
            )?;
        }
        write_differences(f, "redis against the log", &self.redis_differences)?;
        if self.kafka.is_some() {
            write_differences(f, "the log against kafka", &self.kafka_differences)?;
        }
        Ok(())
    }
}

fn write_differences(f: &mut fmt::Formatter<'_>, what: &str, found: &[Difference]) -> fmt::Result {
    if found.is_empty() {
        return writeln!(f, "{what}: equal");
    }
    writeln!(f, "{what}: {} differences", found.len())?;
    for difference in found.iter().take(50) {
        writeln!(f, "  {difference}")?;
    }
    Ok(())
}

/// Runs the audit (and the rebuild first, when asked).
pub async fn run(config: &AuditConfig) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    config.kafka.validate().map_err(anyhow::Error::msg)?;
    let keys = RedisKeys::new(&config.redis.key_prefix);
    // The re-send window does not matter here: the rebuild writes tallies and positions only.
    let tally = Tally::connect(&config.redis.url, keys.clone(), &config.kafka.topic, Duration::from_secs(1))
        .await
        .with_context(|| format!("cannot connect to Redis at {}", config.redis.url))?;
    let log = LogStore::connect(&config.mongo.uri, &bandvote_domain::MongoNames::new(&config.mongo.database))
        .await
        .context("MONGODB_URI is not a valid MongoDB connection string")?;
    let mut report = Report::default();
    if config.rebuild {
        let rules =
            config.contest.load().map_err(anyhow::Error::msg)?.map(|c| crate::tally::Rules::of(&c)).unwrap_or_default();
        let settings = RebuildSettings {
            rules,
            kafka: config.kafka.clone(),
            group: config.group.clone(),
            log_wait: config.log_wait,
        };
        let rebuilt = crate::rebuild::rebuild(&settings, &log, &tally).await.context("cannot rebuild the tallies")?;
        report.rebuilt = Some(rebuilt);
    }
    report.log = count_log(&log).await.context("cannot read the vote log")?;
    let contest = config.contest.load().map_err(anyhow::Error::msg)?;
    if let Some(contest) = &contest {
        report.rule_violations = report.log.rule_violations(&contest.voters);
    }
    report.redis = count_redis(tally.connection(), &keys).await.context("cannot read the tallies")?;
    report.redis_differences = report.log.counts.differences(&report.redis);
    report.redis_differences.extend(leaderboard_differences(tally.connection(), &keys, &report.redis.bands).await?);
    if config.replay_kafka {
        let (kafka, within) = (config.kafka.clone(), config.replay_timeout);
        let replay = tokio::task::spawn_blocking(move || replay_kafka(&kafka, within))
            .await?
            .context("cannot replay the votes topic")?;
        if replay.truncated.is_empty() {
            report.kafka_differences = replay.counts.differences(&report.log.counts);
        }
        report.kafka = Some(replay);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_document_is_named_by_its_id_whatever_its_type() {
        let raw = |document: bson::Document| RawDocumentBuf::from_document(&document).expect("a document");
        assert_eq!(id_of(&raw(doc! {"_id": "phone:502/v-1", "name": 7})), "phone:502/v-1");
        assert_eq!(id_of(&raw(doc! {"_id": 42_i32})), "42");
        assert_eq!(id_of(&raw(doc! {"name": "no id"})), "(no _id)");
        let unreadable: Result<LogDocument, _> = bson::from_slice(raw(doc! {"_id": "v-1", "name": 7}).as_bytes());
        assert!(unreadable.is_err(), "a document that is not a vote's is not read as one");
    }
}
