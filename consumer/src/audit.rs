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
pub use bandvote_ops::tallies::{Counts, Difference};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, RawBsonRef, RawDocument, RawDocumentBuf, doc};
use rdkafka::{Message, consumer::BaseConsumer};
use redis::aio::ConnectionManager;

use crate::{
    log_store::{KafkaVote, LogStore},
    rebuild::{RebuildSettings, Rebuilt},
    tally::Tally,
};

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
                found.counts.add_logged(&vote.event, vote.refused);
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
    Counts::read(&mut redis.clone(), keys).await
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
    let mut replay = KafkaReplay::default();
    let mut seen = HashSet::new();
    replay.truncated = bandvote_ops::topics::read_to_end(&consumer, &kafka.topic, within, |message| {
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
    })?;
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
