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
//! A vote re-sent by a client (the same voter and `vote_id`, a new Kafka record) is recognised
//! within the re-send window ([`ResendWindow`]): each partition remembers, for every vote it
//! decided, the digest of its voter and vote id with what became of it and a fingerprint of its
//! content, in one Redis hash per generation that expires with its generation. A re-send with the
//! same content repeats the first decision; one with other content is refused (`vote_id_conflict`).
//! Every copy of a vote and every vote of a voter lands in the same partition (the record key is
//! the voter, else the vote id), so the hashes of one partition are enough, and so is its hash of
//! voter counts, which the contest's per-voter rule is checked against in the same atomic step.
//! Only the re-send hashes expire; the tallies, positions and voter counts never do, so a Redis
//! configured with `maxmemory-policy volatile-ttl` evicts re-send memory (shortening the window,
//! which the script measures) and never a count.
//!
//! The decision for each vote comes back to the consumer, which logs refused votes with their
//! reason. A record delivered again gets the decision it had (from the re-send memory), so the
//! log says the same thing whichever delivery reaches it first.

use std::{collections::HashMap, time::Duration};

use bandvote_domain::{Contest, RedisKeys, Refused, ResendWindow, VoteEvent};
use redis::{Script, aio::ConnectionManager};

/// The counting script, for the records of one partition. KEYS: the eleven tally keys
/// ([`tally_keys`]), the partition's position, its voter counts, then the re-send hashes of
/// consecutive generations from ARGV[3]. ARGV: the offset the consumer read from, whether that is
/// the partition's first held record (`1`), the first generation in KEYS, generation length (ms),
/// window (ms), generations looked back, vote count n, dead-letter count d, group count g, voter
/// count v, voting opens (ms, `''` for never), closes, most votes per voter (`''`: no limit), most
/// per voter and band; then four values per group (band, album field, route, second: what a vote
/// adds to); then the v voter ids; then one packed string of n records (`>dIIIIdd`: offset, group,
/// voter (0: none), content fingerprint as two words, rank, acceptance ms); then n vote digests;
/// then d dead-letter offsets. Packing the per-vote numbers keeps the cost per vote low: every
/// argument becomes a Lua string.
///
/// The re-send memory maps a vote's digest to a mark (`C` counted, or the refusal's mark, see
/// [`Refused::mark`]) and its fingerprint; a vote refused as a conflict is remembered under the
/// SHA-1 of its digest and fingerprint, so that its own re-sends repeat it.
///
/// Returns `{"counted", counted, repeated, redelivered, dead letters, window ms, next offset,
/// decisions}` with one mark per vote (`C`, a refusal's mark, or `?` for a vote delivered again
/// whose decision is no longer remembered), `{"behind", position}` when the records start past the
/// position (Redis lost counts: read again from the position), or `{"none"}` when the partition
/// has no position and the records do not start at its beginning.
const APPLY_PARTITION: &str = r"
local from, origin = tonumber(ARGV[1]), ARGV[2]
local first_gen, gen_ms, window_ms, behind = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n, d, groups, voters = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local opens, closes, max_votes, max_band = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local position, counts = KEYS[12], KEYS[13]
local stored = redis.call('HGET', position, 'next')
if stored then
  stored = tonumber(stored)
  if from > stored then return {'behind', stored} end
elseif origin == '1' then
  stored = from
else
  return {'none'}
end
local function set_of(g) return KEYS[14 + g - first_gen] end
local groups_at = 15
local voters_at = groups_at + 4 * groups
local records = ARGV[voters_at + voters]
local digests_at = voters_at + voters

-- Every vote of the batch, in offset order.
local next, pos = stored, 1
local offset_of, group_of, voter_of, hi_of, lo_of, rank_of, ms_of, gen_of = {}, {}, {}, {}, {}, {}, {}, {}
local low_gen, high_gen, newest_ms
for k = 1, n do
  offset_of[k], group_of[k], voter_of[k], hi_of[k], lo_of[k], rank_of[k], ms_of[k], pos =
    struct.unpack('>dIIIIdd', records, pos)
  if offset_of[k] + 1 > next then next = offset_of[k] + 1 end
  local gen = math.floor(ms_of[k] / gen_ms)
  gen_of[k] = gen
  if not low_gen or gen < low_gen then low_gen = gen end
  if not high_gen or gen > high_gen then high_gen = gen end
  if offset_of[k] >= stored and (not newest_ms or ms_of[k] > newest_ms) then newest_ms = ms_of[k] end
end
local letters = 0
for k = 1, d do
  local offset = tonumber(ARGV[digests_at + n + k])
  if offset + 1 > next then next = offset + 1 end
  if offset >= stored then letters = letters + 1 end
end

-- What the re-send memory says of each vote: one HMGET per existing generation.
local memory = {}
local existing = {}
if low_gen then
  local digests = {}
  for k = 1, n do digests[k] = ARGV[digests_at + k] end
  for g = low_gen - behind, high_gen + 1 do
    if redis.call('EXISTS', set_of(g)) == 1 then
      existing[g] = true
      for start = 1, n, 1000 do
        local last = math.min(start + 999, n)
        local found = redis.call('HMGET', set_of(g), unpack(digests, start, last))
        for j = 1, last - start + 1 do
          local k = start + j - 1
          if found[j] and not memory[k] and g >= gen_of[k] - behind and g <= gen_of[k] + 1 then memory[k] = found[j] end
        end
      end
    end
  end
end
local function recall(key, k)
  for g = gen_of[k] - behind, gen_of[k] + 1 do
    if existing[g] then
      local value = redis.call('HGET', set_of(g), key)
      if value then return value end
    end
  end
  return nil
end
local function fingerprint(k) return struct.pack('>II', hi_of[k], lo_of[k]) end

-- What each voter of the batch has used.
local used = {}
if (max_votes or max_band) and voters > 0 then
  local fields, seen_field = {}, {}
  local function want(field) if not seen_field[field] then seen_field[field] = true; fields[#fields + 1] = field end end
  for k = 1, n do
    if voter_of[k] > 0 then
      local voter = ARGV[voters_at + voter_of[k] - 1]
      want(voter)
      if max_band then want(voter .. '|' .. ARGV[groups_at + 4 * (group_of[k] - 1)]) end
    end
  end
  for start = 1, #fields, 1000 do
    local last = math.min(start + 999, #fields)
    local values = redis.call('HMGET', counts, unpack(fields, start, last))
    for j = 1, last - start + 1 do used[fields[start + j - 1]] = tonumber(values[j] or '0') end
  end
end

-- The decisions, in order.
local counted, repeated, redelivered = 0, 0, 0
local marks, remember, batch, changed = {}, {}, {}, {}
local per_group, sums, refusals = {}, {}, {}
local function keep(g, key, mark, k)
  local list = remember[g]
  if not list then list = {}; remember[g] = list end
  list[#list + 1] = key
  list[#list + 1] = mark .. fingerprint(k)
  batch[key] = mark .. fingerprint(k)
end
for k = 1, n do
  local digest = ARGV[digests_at + k]
  local known = batch[digest] or memory[k]
  local mark
  if known and string.sub(known, 2) == fingerprint(k) then
    mark = string.sub(known, 1, 1)
    if offset_of[k] < stored then redelivered = redelivered + 1 else repeated = repeated + 1 end
  elseif known then
    local conflict = redis.sha1hex(digest .. fingerprint(k))
    local again = batch[conflict] or recall(conflict, k)
    if again then
      mark = string.sub(again, 1, 1)
      if offset_of[k] < stored then redelivered = redelivered + 1 else repeated = repeated + 1 end
    elseif offset_of[k] < stored then
      mark = '?'
      redelivered = redelivered + 1
    else
      mark = 'X'
      keep(gen_of[k], conflict, mark, k)
      refusals[mark] = (refusals[mark] or 0) + 1
    end
  elseif offset_of[k] < stored then
    mark = '?'
    redelivered = redelivered + 1
  else
    local voter = voter_of[k] > 0 and ARGV[voters_at + voter_of[k] - 1]
    local band = ARGV[groups_at + 4 * (group_of[k] - 1)]
    local voter_band = voter and (voter .. '|' .. band)
    if (opens and ms_of[k] < opens) or (closes and ms_of[k] >= closes) then
      mark = 'W'
    elseif voter and max_votes and used[voter] >= max_votes then
      mark = 'L'
    elseif voter and max_band and used[voter_band] >= max_band then
      mark = 'B'
    else
      mark = 'C'
      counted = counted + 1
      local group = group_of[k]
      per_group[group] = (per_group[group] or 0) + 1
      sums[group] = (sums[group] or 0) + rank_of[k]
      if voter and max_votes then used[voter] = used[voter] + 1; changed[voter] = true end
      if voter and max_band then used[voter_band] = used[voter_band] + 1; changed[voter_band] = true end
    end
    keep(gen_of[k], digest, mark, k)
    if mark ~= 'C' then refusals[mark] = (refusals[mark] or 0) + 1 end
  end
  marks[k] = mark
end

local bands, albums, album_sums, routes, seconds = {}, {}, {}, {}, {}
for group, c in pairs(per_group) do
  local at = groups_at + 4 * (group - 1)
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
local reasons = {W = 'voting_closed', L = 'limit_reached', B = 'band_limit_reached', X = 'vote_id_conflict'}
for mark, c in pairs(refusals) do redis.call('HINCRBY', KEYS[11], reasons[mark], c) end
for field in pairs(changed) do redis.call('HSET', counts, field, used[field]) end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for g, list in pairs(remember) do
  for start = 1, #list, 1000 do
    redis.call('HSET', set_of(g), unpack(list, start, math.min(start + 999, #list)))
  end
  redis.call('HINCRBY', position, 'g:' .. string.format('%d', g), #list / 2)
  local expires = math.max(now_ms, (g + 1) * gen_ms) + window_ms
  redis.call('PEXPIREAT', set_of(g), string.format('%d', expires))
end
redis.call('HSET', position, 'next', string.format('%d', next))

-- How far back the re-send memory is whole: a generation whose hash holds fewer votes than it was
-- given lost them to eviction, and so did the window from there back.
local window = -1
if newest_ms then
  local newest_gen = math.floor(newest_ms / gen_ms)
  local intact_from = newest_gen - behind
  for g = newest_gen, newest_gen - behind, -1 do
    local given = tonumber(redis.call('HGET', position, 'g:' .. string.format('%d', g)) or '0')
    if given > 0 and redis.call('HLEN', set_of(g)) < given then intact_from = g + 1; break end
  end
  window = math.max(0, math.min(window_ms, newest_ms - intact_from * gen_ms))
  if redis.call('HLEN', position) > behind + 8 then
    for _, field in ipairs(redis.call('HKEYS', position)) do
      local g = string.sub(field, 1, 2) == 'g:' and tonumber(string.sub(field, 3))
      if g and g < newest_gen - behind - 1 then redis.call('HDEL', position, field) end
    end
  end
end
return {'counted', counted, repeated, redelivered, letters, window, next, table.concat(marks)}
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What became of one vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Counted (now, or when this vote was first delivered or sent).
    Counted,
    /// Refused, for this reason.
    Refused(Refused),
    /// Delivered again long after it was decided (the re-send memory has expired): the log has had
    /// it since.
    Forgotten,
}

/// The counts of a counted partition batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counted {
    /// Votes counted now.
    pub counted: u64,
    /// Re-sent votes (a vote counted or refused before, within the re-send window).
    pub repeated: u64,
    /// Records below the position: decided before, delivered again.
    pub redelivered: u64,
    /// Dead letters counted now.
    pub dead_letters: u64,
    /// How far back the re-send memory is whole (the configured window unless Redis evicted some);
    /// `None` for a batch without new votes.
    pub window: Option<Duration>,
    /// The partition's position after the batch.
    pub next: i64,
    /// One decision per vote of the batch, in its order.
    pub decisions: Vec<Decision>,
}

impl Counted {
    /// Votes refused now or before, by reason.
    pub fn refused(&self) -> impl Iterator<Item = Refused> + '_ {
        self.decisions.iter().filter_map(|d| match d {
            Decision::Refused(reason) => Some(*reason),
            _ => None,
        })
    }
}

/// The contest's rules that the counting step applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub opens_ms: Option<i64>,
    pub closes_ms: Option<i64>,
    pub max_votes: Option<u32>,
    pub max_votes_per_band: Option<u32>,
}

impl Rules {
    pub fn of(contest: &Contest) -> Self {
        Rules {
            opens_ms: contest.window.opens.as_ref().map(|o| o.ms),
            closes_ms: contest.window.closes.as_ref().map(|c| c.ms),
            max_votes: contest.voters.max_votes,
            max_votes_per_band: contest.voters.max_votes_per_band,
        }
    }
}

#[derive(Clone)]
pub struct Tally {
    redis: ConnectionManager,
    keys: RedisKeys,
    topic: String,
    script: Script,
    window: ResendWindow,
    rules: Rules,
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
        let script = Script::new(APPLY_PARTITION);
        Ok(Tally { redis, keys, topic: topic.to_owned(), script, window, rules: Rules::default() })
    }

    /// The same tally, applying a contest's window and per-voter rule.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
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
        invocation.key(k.voters(&self.topic, batch.partition));
        for generation in first..=last {
            invocation.key(k.resend(&self.topic, batch.partition, generation));
        }
        // What each vote adds to: (band, album field, route, second), and its voter, numbered from 1.
        let mut groups: Vec<(&str, String, &str, i64)> = Vec::new();
        let mut group_index: HashMap<(&str, &str, &str, i64), u32> = HashMap::new();
        let mut voters: Vec<&str> = Vec::new();
        let mut voter_index: HashMap<&str, u32> = HashMap::new();
        let mut records = Vec::with_capacity(batch.votes.len() * 40);
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
            let voter = ballot.voter_id.as_deref().map_or(0, |voter| {
                *voter_index.entry(voter).or_insert_with(|| {
                    voters.push(voter);
                    voters.len() as u32
                })
            });
            let fingerprint = vote.content_fingerprint();
            records.extend_from_slice(&(*offset as f64).to_be_bytes());
            records.extend_from_slice(&group.to_be_bytes());
            records.extend_from_slice(&voter.to_be_bytes());
            records.extend_from_slice(&fingerprint);
            records.extend_from_slice(&ballot.rank.get().to_be_bytes());
            records.extend_from_slice(&(vote.received_at_ms as f64).to_be_bytes());
        }
        let optional = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
        invocation
            .arg(batch.origin.offset())
            .arg(u8::from(matches!(batch.origin, Origin::Start(_))))
            .arg(first)
            .arg(window.generation_ms())
            .arg(window.window_ms())
            .arg(ResendWindow::BEHIND)
            .arg(batch.votes.len())
            .arg(batch.dead_letters.len())
            .arg(groups.len())
            .arg(voters.len())
            .arg(optional(self.rules.opens_ms))
            .arg(optional(self.rules.closes_ms))
            .arg(optional(self.rules.max_votes.map(i64::from)))
            .arg(optional(self.rules.max_votes_per_band.map(i64::from)));
        for (band, album, route, second) in &groups {
            invocation.arg(*band).arg(album).arg(*route).arg(second);
        }
        for voter in &voters {
            invocation.arg(*voter);
        }
        invocation.arg(records);
        for (_, vote) in &batch.votes {
            invocation.arg(&RedisKeys::resend_member(vote.ballot.voter_id.as_deref(), vote.vote_id.as_str())[..]);
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
/// leaderboard, per-second, rank sum, rank average, timeline, dead letters, refused.
pub(crate) fn tally_keys(k: &RedisKeys) -> [String; 11] {
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
        k.refused(),
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
            let marks = reply.get(7).map(String::from_redis_value_ref).transpose()?.unwrap_or_default();
            let decisions = marks
                .chars()
                .map(|mark| match mark {
                    'C' => Ok(Decision::Counted),
                    '?' => Ok(Decision::Forgotten),
                    other => Refused::from_mark(other).map(Decision::Refused).ok_or_else(|| unexpected(reply)),
                })
                .collect::<redis::RedisResult<_>>()?;
            Ok(Applied::Counted(Counted {
                counted: count(1)?,
                repeated: count(2)?,
                redelivered: count(3)?,
                dead_letters: count(4)?,
                window: (window >= 0).then(|| Duration::from_millis(window as u64)),
                next: number(6)?,
                decisions,
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
