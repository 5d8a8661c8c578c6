//! Rebuilding the Redis tallies from the MongoDB log, after Redis lost or mangled some of them.
//!
//! Invariant: the tallies count exactly the votes of the records below each partition's position
//! (see [`crate::tally`]). The rebuild restores that invariant without replaying anything through
//! the counting script, so it is right at any age of the votes and safe while consumers run:
//!
//! 1. Read every partition's position and every tally in one Redis transaction (the snapshot).
//! 2. Take a cut per partition: the position, or, for a partition Redis has no position for (it
//!    lost everything), the consumer group's committed offset. Wait until the group has committed
//!    up to every position, so that the log holds every vote below the cut.
//! 3. Count the logged votes below the cut and subtract the snapshot: the difference is what Redis
//!    lost (or counted beyond the log).
//! 4. Add the difference in one script that first checks that no position moved backwards and
//!    that the partitions without a position still have none (then gives them the cut). Counting
//!    that consumers did meanwhile is above the cut and commutes with the difference; if the check
//!    fails, everything is read again.
//!
//! On an intact Redis the difference is zero and nothing changes, however old the votes are.

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::Context as _;
use bandvote_ops::config::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use redis::Script;

use crate::{
    audit::{Counts, LogReader},
    log_store::LogStore,
    tally::Tally,
};

/// Attempts before the rebuild gives up on consumers that keep moving the positions under it.
const ATTEMPTS: usize = 5;

/// Adds the differences. KEYS: the eleven tally keys of the counting script (total, band, album,
/// route, leaderboard, per-second, rank sum, rank average, timeline, dead letters, refused), then
/// one position key per partition, then one voter-count key per partition (same order). ARGV: for each partition the position it must
/// have at least (`''`: it must have none) and the position to give it (`''`: leave it); then
/// the total difference; the band count and (band, difference) pairs; the album count and
/// (album, count difference, rank-sum difference) triples; the route count and pairs; the second
/// count and pairs; the refusal count and pairs; the voter-count count and (partition number from 1,
/// field, difference) triples. Returns 1 when applied, 0 when a position moved.
const APPLY_DIFFERENCE: &str = r"
local partitions = (#KEYS - 11) / 2
for p = 1, partitions do
  local at_least = ARGV[2 * p - 1]
  local current = redis.call('HGET', KEYS[11 + p], 'next')
  if at_least == '' then
    if current then return 0 end
  elseif not current or tonumber(current) < tonumber(at_least) then
    return 0
  end
end
for p = 1, partitions do
  local give = ARGV[2 * p]
  if give ~= '' then redis.call('HSET', KEYS[11 + p], 'next', give) end
end
local i = 2 * partitions + 1
local total = tonumber(ARGV[i])
i = i + 1
if total ~= 0 then redis.call('INCRBY', KEYS[1], total) end
local function counter(key, field, difference)
  local now = redis.call('HINCRBY', key, field, difference)
  if now == 0 then redis.call('HDEL', key, field) end
  return now
end
for _ = 1, tonumber(ARGV[i]) do
  local band, difference = ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 2
  local now = counter(KEYS[2], band, difference)
  if now == 0 then redis.call('ZREM', KEYS[5], band) else redis.call('ZADD', KEYS[5], now, band) end
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  local album, difference, sum = ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  i = i + 3
  local votes = counter(KEYS[3], album, difference)
  local total_rank = redis.call('HINCRBYFLOAT', KEYS[7], album, sum)
  if votes == 0 then
    redis.call('HDEL', KEYS[7], album)
    redis.call('HDEL', KEYS[8], album)
  else
    redis.call('HSET', KEYS[8], album, tostring(tonumber(total_rank) / votes))
  end
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  counter(KEYS[4], ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 2
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  counter(KEYS[6], ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 2
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  counter(KEYS[11], ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 2
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  counter(KEYS[11 + partitions + tonumber(ARGV[i + 1])], ARGV[i + 2], tonumber(ARGV[i + 3]))
  i = i + 3
end
return 1
";

/// What a rebuild changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rebuilt {
    /// Votes added to the total (negative: removed, when Redis had counted more than the log).
    pub votes: i64,
    /// Counters that changed (band, album, route, second, rank sum).
    pub counters: u64,
    /// Partitions that had no position and were given one: partition → position.
    pub positions: BTreeMap<i32, i64>,
}

impl fmt::Display for Rebuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rebuild: {:+} votes, {} counters changed", self.votes, self.counters)?;
        if !self.positions.is_empty() {
            write!(f, ", positions restored from the group's commits {:?}", self.positions)?;
        }
        Ok(())
    }
}

/// What the rebuild needs besides the stores.
#[derive(Debug, Clone)]
pub struct RebuildSettings {
    /// The contest's rule: which voter counts the counting step keeps.
    pub rules: crate::tally::Rules,
    pub kafka: KafkaArgs,
    /// The consumers' group, whose commits say how far the log is complete.
    pub group: String,
    /// Longest wait for the group's commits to reach Redis's positions.
    pub log_wait: Duration,
}

/// Rebuilds the tallies from the log (see the module documentation).
pub async fn rebuild(settings: &RebuildSettings, log: &LogStore, tally: &Tally) -> anyhow::Result<Rebuilt> {
    let kafka = settings.kafka.clone();
    let partitions = tokio::task::spawn_blocking(move || partitions_of(&kafka)).await??;
    for _ in 0..ATTEMPTS {
        let snapshot = Snapshot::read(tally, &partitions).await.context("cannot read the tallies")?;
        let cut = wait_for_log(settings, &snapshot).await?;
        let (logged, voters) = count_log_below(log, &cut, settings.rules).await.context("cannot read the vote log")?;
        let mut difference = Difference::between(&logged, &snapshot.counts);
        difference.voters = voter_differences(&voters, &snapshot.voters, &partitions);
        let positions: BTreeMap<i32, i64> = partitions
            .iter()
            .filter(|p| snapshot.positions[p].is_none())
            .filter_map(|p| cut.get(p).map(|&c| (*p, c)))
            .collect();
        if difference.apply(tally, &partitions, &snapshot, &positions).await.context("cannot write the tallies")? {
            return Ok(Rebuilt { votes: difference.total, counters: difference.counters(), positions });
        }
        tracing::info!("the consumers moved a position meanwhile; reading again");
    }
    anyhow::bail!(
        "Redis's positions kept moving in ways a running consumer does not move them; stop the consumers and rebuild again"
    )
}

/// The partitions of the votes topic.
fn partitions_of(kafka: &KafkaArgs) -> anyhow::Result<Vec<i32>> {
    let consumer: BaseConsumer = kafka.client_config("bandvote-rebuild").create()?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic && !t.partitions().is_empty())
        .ok_or_else(|| anyhow::anyhow!("topic {} not found", kafka.topic))?;
    Ok(topic.partitions().iter().map(|p| p.id()).collect())
}

/// The group's committed offset per partition (partitions without one are left out).
fn committed(settings: &RebuildSettings, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer =
        settings.kafka.client_config("bandvote-rebuild").set("group.id", &settings.group).create()?;
    Ok(bandvote_ops::topics::committed(&consumer, &settings.kafka.topic, partitions, Duration::from_secs(10))?)
}

/// Positions and tallies read in one transaction.
struct Snapshot {
    positions: BTreeMap<i32, Option<i64>>,
    counts: Counts,
    /// (partition, field) → votes counted for the voter (`<voter>` or `<voter>|<band>`).
    voters: BTreeMap<(i32, String), u64>,
}

impl Snapshot {
    async fn read(tally: &Tally, partitions: &[i32]) -> redis::RedisResult<Self> {
        let keys = tally.keys();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for &p in partitions {
            pipe.hget(keys.position(tally.topic(), p), "next");
        }
        for &p in partitions {
            pipe.hgetall(keys.voters(tally.topic(), p));
        }
        bandvote_ops::tallies::reads(&mut pipe, keys);
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut tally.connection().clone()).await?;
        let tallies = replies.split_off(2 * partitions.len());
        let counts = replies.split_off(partitions.len());
        let positions = partitions
            .iter()
            .zip(replies)
            .map(|(&p, v)| Ok((p, redis::from_redis_value::<Option<i64>>(v)?)))
            .collect::<redis::RedisResult<_>>()?;
        let mut voters = BTreeMap::new();
        for (&p, value) in partitions.iter().zip(counts) {
            let fields: BTreeMap<String, u64> = redis::from_redis_value(value)?;
            voters.extend(fields.into_iter().map(|(field, n)| ((p, field), n)));
        }
        Ok(Snapshot { positions, counts: Counts::from_replies(tallies)?, voters })
    }
}

/// The cut per partition, once the group's commits show that the log holds everything below it.
async fn wait_for_log(settings: &RebuildSettings, snapshot: &Snapshot) -> anyhow::Result<BTreeMap<i32, i64>> {
    let deadline = tokio::time::Instant::now() + settings.log_wait;
    let partitions: Vec<i32> = snapshot.positions.keys().copied().collect();
    loop {
        let (s, p) = (settings.clone(), partitions.clone());
        let committed = tokio::task::spawn_blocking(move || committed(&s, &p)).await??;
        let behind: Vec<String> = snapshot
            .positions
            .iter()
            .filter_map(|(p, position)| {
                let (position, logged) = ((*position)?, committed.get(p).copied().unwrap_or(0));
                (logged < position).then(|| format!("partition {p} counted to offset {position}, logged to {logged}"))
            })
            .collect();
        if behind.is_empty() {
            let cut = snapshot
                .positions
                .iter()
                .filter_map(|(p, position)| position.or_else(|| committed.get(p).copied()).map(|c| (*p, c)))
                .collect();
            return Ok(cut);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the log does not yet hold every vote Redis counted ({}); a running consumer of group {} logs them: \
                 start one and rebuild again",
                behind.join("; "),
                settings.group
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts the logged votes whose Kafka record is below the cut of its partition.
/// Counts the logged votes whose Kafka record is below the cut of its partition, and the voter
/// counts the counting step keeps for them under `rules`.
async fn count_log_below(
    log: &LogStore,
    cut: &BTreeMap<i32, i64>,
    rules: crate::tally::Rules,
) -> mongodb::error::Result<(Counts, BTreeMap<(i32, String), u64>)> {
    let mut reader = LogReader::open(log).await?;
    let mut counts = Counts::default();
    let mut voters = BTreeMap::new();
    while let Some(vote) = reader.next_logged().await? {
        if let Ok(vote) = vote
            && cut.get(&vote.partition).is_some_and(|&c| vote.offset < c)
        {
            counts.add_logged(&vote.event, vote.refused);
            if let (None, Some(voter)) = (vote.refused, &vote.event.ballot.voter_id) {
                if rules.max_votes.is_some() {
                    *voters.entry((vote.partition, voter.clone())).or_default() += 1;
                }
                if rules.max_votes_per_band.is_some() {
                    *voters.entry((vote.partition, format!("{voter}|{}", vote.event.ballot.band))).or_default() += 1;
                }
            }
        }
    }
    Ok((counts, voters))
}

/// The voter counts to add: (partition number from 1, field, difference).
fn voter_differences(
    logged: &BTreeMap<(i32, String), u64>,
    counted: &BTreeMap<(i32, String), u64>,
    partitions: &[i32],
) -> Vec<(usize, String, i64)> {
    let keys: std::collections::BTreeSet<&(i32, String)> = logged.keys().chain(counted.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let d = logged.get(key).copied().unwrap_or(0) as i64 - counted.get(key).copied().unwrap_or(0) as i64;
            let index = partitions.iter().position(|p| *p == key.0)? + 1;
            (d != 0).then(|| (index, key.1.clone(), d))
        })
        .collect()
}

/// What must be added to the tallies to make them equal to the log.
#[derive(Debug, Default)]
struct Difference {
    total: i64,
    bands: Vec<(String, i64)>,
    /// (album, votes, rank sum).
    albums: Vec<(String, i64, f64)>,
    routes: Vec<(String, i64)>,
    seconds: Vec<(String, i64)>,
    refused: Vec<(String, i64)>,
    /// (partition number from 1, field, difference).
    voters: Vec<(usize, String, i64)>,
}

impl Difference {
    fn between(logged: &Counts, counted: &Counts) -> Self {
        fn whole(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<(String, i64)> {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .map(|k| (k.clone(), a.get(k).copied().unwrap_or(0) as i64 - b.get(k).copied().unwrap_or(0) as i64))
                .filter(|(_, d)| *d != 0)
                .collect()
        }
        let albums = {
            let votes: BTreeMap<String, i64> = whole(&logged.albums, &counted.albums).into_iter().collect();
            let keys: std::collections::BTreeSet<&String> =
                logged.rank_sums.keys().chain(counted.rank_sums.keys()).chain(votes.keys()).collect();
            keys.into_iter()
                .filter_map(|k| {
                    let (a, b) = (
                        logged.rank_sums.get(k).copied().unwrap_or(0.0),
                        counted.rank_sums.get(k).copied().unwrap_or(0.0),
                    );
                    let sum = if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) { a - b } else { 0.0 };
                    let votes = votes.get(k).copied().unwrap_or(0);
                    (votes != 0 || sum != 0.0).then(|| (k.clone(), votes, sum))
                })
                .collect()
        };
        Difference {
            total: logged.total as i64 - counted.total as i64,
            bands: whole(&logged.bands, &counted.bands),
            albums,
            routes: whole(&logged.routes, &counted.routes),
            seconds: whole(&logged.seconds, &counted.seconds),
            refused: whole(&logged.refused, &counted.refused),
            voters: Vec::new(),
        }
    }

    fn counters(&self) -> u64 {
        (self.bands.len()
            + self.albums.len()
            + self.routes.len()
            + self.seconds.len()
            + self.refused.len()
            + self.voters.len()) as u64
    }

    /// Adds the difference and gives `positions` to the partitions that had none; false (and
    /// nothing written) when a position moved since `snapshot`.
    async fn apply(
        &self,
        tally: &Tally,
        partitions: &[i32],
        snapshot: &Snapshot,
        positions: &BTreeMap<i32, i64>,
    ) -> redis::RedisResult<bool> {
        let k = tally.keys();
        let script = Script::new(APPLY_DIFFERENCE);
        let mut invocation = script.prepare_invoke();
        for key in crate::tally::tally_keys(k) {
            invocation.key(key);
        }
        for &p in partitions {
            invocation.key(k.position(tally.topic(), p));
            let at_least = snapshot.positions[&p].map(|o| o.to_string()).unwrap_or_default();
            invocation.arg(at_least).arg(positions.get(&p).map(|o| o.to_string()).unwrap_or_default());
        }
        for &p in partitions {
            invocation.key(k.voters(tally.topic(), p));
        }
        invocation.arg(self.total).arg(self.bands.len());
        for (band, d) in &self.bands {
            invocation.arg(band).arg(d);
        }
        invocation.arg(self.albums.len());
        for (album, d, sum) in &self.albums {
            invocation.arg(album).arg(d).arg(format!("{sum:?}"));
        }
        invocation.arg(self.routes.len());
        for (route, d) in &self.routes {
            invocation.arg(route).arg(d);
        }
        for section in [&self.seconds, &self.refused] {
            invocation.arg(section.len());
            for (field, d) in section {
                invocation.arg(field).arg(d);
            }
        }
        invocation.arg(self.voters.len());
        for (partition, field, d) in &self.voters {
            invocation.arg(partition).arg(field).arg(d);
        }
        let applied: i64 = invocation.invoke_async(&mut tally.connection().clone()).await?;
        Ok(applied == 1)
    }
}
