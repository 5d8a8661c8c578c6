//! The live tallies in Redis, read by Grafana.
//!
//! Invariant: every Kafka record is counted at most once, with state that stays bounded. Redis
//! keeps each partition's counting position (the first offset not counted yet) next to the
//! tallies, and one Lua script per partition and batch checks the position, counts the records
//! at or after it and moves it past them, all in one atomic step. A crash leaves a batch wholly
//! counted or not at all; a record delivered again (after a crash, a rebalance, a replay from old
//! offsets, at any age) is below the position and adds nothing. If Redis itself went back (it lost
//! its last writes), the script sees records beyond its position and asks the consumer to read
//! the partition again from there, so the lost counts come back from Kafka.
//!
//! A vote re-sent by a client (the same `vote_id`, a new Kafka record) is recognised within the
//! re-send window ([`ResendWindow`]): each partition remembers the digests of the vote ids it
//! counted in one Redis set per generation, which expires with its generation. Every copy of a
//! vote lands in the same partition (the record key is the vote id), so the sets of one partition
//! are enough. Only these sets expire; the tallies and positions never do, so a Redis configured
//! with `maxmemory-policy volatile-ttl` evicts re-send memory (shortening the window, which the
//! script measures) and never a count.

use std::time::Duration;

use bandvote_domain::{RedisKeys, ResendWindow, VoteEvent};
use redis::{Script, aio::ConnectionManager};

/// The counting script, for the records of one partition. KEYS: total, band, album, route,
/// leaderboard, per-second, rank sum, rank average, timeline, dead letters, the partition's
/// position, then the re-send sets of consecutive generations from ARGV[3]. ARGV: the offset the
/// consumer read from, whether that is the partition's first held record (`1`), the first
/// generation in KEYS, generation length (ms), window (ms), generations looked back, vote count n,
/// dead-letter count d, group count g; then four values per group (band, album field, route,
/// second: what a vote adds to); then one packed string of n records (`>dIdd`: offset, group,
/// rank, acceptance ms); then n vote id digests; then d dead-letter offsets. Packing the per-vote
/// numbers into one string keeps the cost per vote low: every argument becomes a Lua string.
///
/// Returns `{"counted", counted, repeated, redelivered, dead letters, window ms, next offset}`,
/// `{"behind", position}` when the records start past the position (Redis lost counts: read again
/// from the position), or `{"none"}` when the partition has no position and the records do not
/// start at its beginning.
const APPLY_PARTITION: &str = r"
local from, origin = tonumber(ARGV[1]), ARGV[2]
local first_gen, gen_ms, window_ms, behind = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n, d, groups = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local position = KEYS[11]
local stored = redis.call('HGET', position, 'next')
if stored then
  stored = tonumber(stored)
  if from > stored then return {'behind', stored} end
elseif origin == '1' then
  stored = from
else
  return {'none'}
end
local function set_of(g) return KEYS[12 + g - first_gen] end
local records, digests_at = ARGV[10 + 4 * groups], 10 + 4 * groups

-- The votes at or past the position, first copy of each vote id only.
local next, redelivered, repeated = stored, 0, 0
local digests, group_of, rank_of, gen_of, ms_of = {}, {}, {}, {}, {}
local seen, low_gen, high_gen, newest_ms, pos = {}, nil, nil, nil, 1
for k = 1, n do
  local offset, group, rank, ms
  offset, group, rank, ms, pos = struct.unpack('>dIdd', records, pos)
  if offset + 1 > next then next = offset + 1 end
  if offset < stored then
    redelivered = redelivered + 1
  else
    local digest = ARGV[digests_at + k]
    if seen[digest] then
      repeated = repeated + 1
    else
      seen[digest] = true
      local m = #digests + 1
      local gen = math.floor(ms / gen_ms)
      digests[m], group_of[m], rank_of[m], gen_of[m] = digest, group, rank, gen
      if not low_gen or gen < low_gen then low_gen = gen end
      if not high_gen or gen > high_gen then high_gen = gen end
      if not newest_ms or ms > newest_ms then newest_ms = ms end
    end
  end
end
local letters = 0
for k = 1, d do
  local offset = tonumber(ARGV[digests_at + n + k])
  if offset + 1 > next then next = offset + 1 end
  if offset >= stored then letters = letters + 1 end
end

-- Which of them were counted before, within the window: one SMISMEMBER per existing generation.
local known = {}
if low_gen then
  for g = low_gen - behind, high_gen + 1 do
    if redis.call('EXISTS', set_of(g)) == 1 then
      for start = 1, #digests, 1000 do
        local last = math.min(start + 999, #digests)
        local found = redis.call('SMISMEMBER', set_of(g), unpack(digests, start, last))
        for j, hit in ipairs(found) do
          local m = start + j - 1
          if hit == 1 and g >= gen_of[m] - behind and g <= gen_of[m] + 1 then known[m] = true end
        end
      end
    end
  end
end

local counted = 0
local per_group, sums, added = {}, {}, {}
for m = 1, #digests do
  if known[m] then
    repeated = repeated + 1
  else
    counted = counted + 1
    local group = group_of[m]
    per_group[group] = (per_group[group] or 0) + 1
    sums[group] = (sums[group] or 0) + rank_of[m]
    local list = added[gen_of[m]]
    if not list then list = {}; added[gen_of[m]] = list end
    list[#list + 1] = digests[m]
  end
end

local bands, albums, album_sums, routes, seconds = {}, {}, {}, {}, {}
for group, c in pairs(per_group) do
  local at = 10 + 4 * (group - 1)
  local band, album, route, second = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  bands[band] = (bands[band] or 0) + c
  albums[album] = (albums[album] or 0) + c
  album_sums[album] = (album_sums[album] or 0) + sums[group]
  routes[route] = (routes[route] or 0) + c
  seconds[second] = (seconds[second] or 0) + c
end
for band, c in pairs(bands) do
  redis.call('HINCRBY', KEYS[2], band, c)
  redis.call('ZINCRBY', KEYS[5], c, band)
end
for album, c in pairs(albums) do
  local votes = redis.call('HINCRBY', KEYS[3], album, c)
  local sum = redis.call('HINCRBYFLOAT', KEYS[7], album, string.format('%.17g', album_sums[album]))
  redis.call('HSET', KEYS[8], album, tostring(tonumber(sum) / votes))
end
for route, c in pairs(routes) do redis.call('HINCRBY', KEYS[4], route, c) end
for second, c in pairs(seconds) do redis.call('HINCRBY', KEYS[6], second, c) end
if counted > 0 then
  redis.call('INCRBY', KEYS[1], counted)
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', '100000', '*', 'votes', counted)
end
if letters > 0 then redis.call('INCRBY', KEYS[10], letters) end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for g, list in pairs(added) do
  for start = 1, #list, 1000 do
    redis.call('SADD', set_of(g), unpack(list, start, math.min(start + 999, #list)))
  end
  redis.call('HINCRBY', position, 'g:' .. string.format('%d', g), #list)
  local expires = math.max(now_ms, (g + 1) * gen_ms) + window_ms
  redis.call('PEXPIREAT', set_of(g), string.format('%d', expires))
end
redis.call('HSET', position, 'next', string.format('%d', next))

-- How far back the re-send memory is whole: a generation whose set holds fewer ids than it was
-- given lost them to eviction, and so did the window from there back.
local window = -1
if high_gen then
  local newest_gen = math.floor(newest_ms / gen_ms)
  local intact_from = newest_gen - behind
  for g = newest_gen, newest_gen - behind, -1 do
    local given = tonumber(redis.call('HGET', position, 'g:' .. string.format('%d', g)) or '0')
    if given > 0 and redis.call('SCARD', set_of(g)) < given then intact_from = g + 1; break end
  end
  window = math.max(0, math.min(window_ms, newest_ms - intact_from * gen_ms))
  if redis.call('HLEN', position) > behind + 8 then
    for _, field in ipairs(redis.call('HKEYS', position)) do
      local g = string.sub(field, 1, 2) == 'g:' and tonumber(string.sub(field, 3))
      if g and g < newest_gen - behind - 1 then redis.call('HDEL', position, field) end
    end
  end
end
return {'counted', counted, repeated, redelivered, letters, window, next}
";

/// Where the records of a partition batch were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Somewhere in the partition: Redis must hold a position at or after `from`.
    At(i64),
    /// At the partition's first held record: a partition Redis has no position for starts here.
    Start(i64),
}

impl Origin {
    pub fn offset(self) -> i64 {
        match self {
            Origin::At(offset) | Origin::Start(offset) => offset,
        }
    }
}

/// The records of one partition in one batch.
#[derive(Debug, Clone)]
pub struct PartitionBatch<'a> {
    pub partition: i32,
    pub origin: Origin,
    /// Votes with their offsets, in offset order.
    pub votes: Vec<(i64, &'a VoteEvent)>,
    /// Offsets of the records sent to the dead-letter topic.
    pub dead_letters: Vec<i64>,
}

/// What counting one partition batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The batch is counted; the partition's position is now `next`.
    Counted(Counted),
    /// The records start past the partition's position (Redis lost counts): read the partition
    /// again from `position`. Nothing was counted.
    Behind { position: i64 },
    /// Redis has no position for the partition and the records do not start at its beginning:
    /// read it from its first held record. Nothing was counted.
    NoPosition,
}

/// The counts of a counted partition batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    /// Votes counted now.
    pub counted: u64,
    /// Re-sent votes (a vote id counted before, within the re-send window).
    pub repeated: u64,
    /// Records below the position: counted before, delivered again.
    pub redelivered: u64,
    /// Dead letters counted now.
    pub dead_letters: u64,
    /// How far back the re-send memory is whole (the configured window unless Redis evicted some);
    /// `None` for a batch without votes.
    pub window: Option<Duration>,
    /// The partition's position after the batch.
    pub next: i64,
}

#[derive(Clone)]
pub struct Tally {
    redis: ConnectionManager,
    keys: RedisKeys,
    topic: String,
    script: Script,
    window: ResendWindow,
}

impl Tally {
    pub async fn connect(url: &str, keys: RedisKeys, topic: &str, window: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let redis = ConnectionManager::new_with_config(client, config).await?;
        let window = ResendWindow::new(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        Ok(Tally { redis, keys, topic: topic.to_owned(), script: Script::new(APPLY_PARTITION), window })
    }

    /// Counts the records of one partition, in one atomic step with its position.
    pub async fn apply(&self, batch: &PartitionBatch<'_>) -> redis::RedisResult<Applied> {
        let k = &self.keys;
        let window = self.window;
        let generations = batch.votes.iter().map(|(_, vote)| window.generation_of(vote.received_at_ms));
        let (low, high) = generations.fold((i64::MAX, i64::MIN), |(low, high), g| (low.min(g), high.max(g)));
        let (first, last) =
            if low > high { (0, -1) } else { (*window.lookups(low).start(), *window.lookups(high).end()) };

        let mut invocation = self.script.prepare_invoke();
        for key in tally_keys(k) {
            invocation.key(key);
        }
        invocation.key(k.position(&self.topic, batch.partition));
        for generation in first..=last {
            invocation.key(k.resend(&self.topic, batch.partition, generation));
        }
        // What each vote adds to: (band, album field, route, second), numbered from 1.
        let mut groups: Vec<(&str, String, &str, i64)> = Vec::new();
        let mut group_index: std::collections::HashMap<(&str, &str, &str, i64), u32> = std::collections::HashMap::new();
        let mut records = Vec::with_capacity(batch.votes.len() * 28);
        for (offset, vote) in &batch.votes {
            let ballot = &vote.ballot;
            let second = vote.received_at_ms.div_euclid(1000);
            let key = (ballot.band.as_str(), ballot.album.as_str(), vote.route.as_str(), second);
            let group = *group_index.entry(key).or_insert_with(|| {
                groups.push((
                    &ballot.band,
                    RedisKeys::album_field(&ballot.band, &ballot.album),
                    vote.route.as_str(),
                    second,
                ));
                groups.len() as u32
            });
            records.extend_from_slice(&(*offset as f64).to_be_bytes());
            records.extend_from_slice(&group.to_be_bytes());
            records.extend_from_slice(&ballot.rank.get().to_be_bytes());
            records.extend_from_slice(&(vote.received_at_ms as f64).to_be_bytes());
        }
        invocation
            .arg(batch.origin.offset())
            .arg(u8::from(matches!(batch.origin, Origin::Start(_))))
            .arg(first)
            .arg(window.generation_ms())
            .arg(window.window_ms())
            .arg(ResendWindow::BEHIND)
            .arg(batch.votes.len())
            .arg(batch.dead_letters.len())
            .arg(groups.len());
        for (band, album, route, second) in &groups {
            invocation.arg(*band).arg(album).arg(*route).arg(second);
        }
        invocation.arg(records);
        for (_, vote) in &batch.votes {
            invocation.arg(&RedisKeys::resend_member(vote.vote_id.as_str())[..]);
        }
        for offset in &batch.dead_letters {
            invocation.arg(offset);
        }
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut self.redis.clone()).await?;
        parse_reply(&reply)
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn connection(&self) -> &ConnectionManager {
        &self.redis
    }

    pub async fn ping(&self) -> Result<(), String> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .map(drop)
            .map_err(|e| format!("redis: {e}"))
    }
}

/// The tally keys, in the order both counting scripts take them: total, band, album, route,
/// leaderboard, per-second, rank sum, rank average, timeline, dead letters.
pub(crate) fn tally_keys(k: &RedisKeys) -> [String; 10] {
    [
        k.total(),
        k.by_band(),
        k.by_album(),
        k.by_route(),
        k.leaderboard(),
        k.per_second(),
        k.rank_sum(),
        k.rank_avg(),
        k.timeline(),
        k.dead_letters(),
    ]
}

fn parse_reply(reply: &[redis::Value]) -> redis::RedisResult<Applied> {
    use redis::FromRedisValue as _;
    let number = |i: usize| -> redis::RedisResult<i64> {
        reply.get(i).map_or_else(|| Err(unexpected(reply)), |v| Ok(i64::from_redis_value_ref(v)?))
    };
    let kind = reply.first().map(String::from_redis_value_ref).transpose()?;
    match kind.as_deref() {
        Some("counted") => {
            let count = |i| number(i).map(|n| n.max(0) as u64);
            let window = number(5)?;
            Ok(Applied::Counted(Counted {
                counted: count(1)?,
                repeated: count(2)?,
                redelivered: count(3)?,
                dead_letters: count(4)?,
                window: (window >= 0).then(|| Duration::from_millis(window as u64)),
                next: number(6)?,
            }))
        }
        Some("behind") => Ok(Applied::Behind { position: number(1)? }),
        Some("none") => Ok(Applied::NoPosition),
        _ => Err(unexpected(reply)),
    }
}

fn unexpected(reply: &[redis::Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from the counting script",
        format!("{reply:?}"),
    ))
}
