//! The live tallies in Redis, read by Grafana.
//!
//! Invariant: a vote is counted at most once. One Lua script per batch marks each vote id as seen
//! (`SET NX`) and, only for the ids it newly marked, updates every counter, all in one atomic
//! step: a crash can leave a batch wholly applied or not at all, and a batch delivered again (after
//! a crash, a rebalance, or a client re-sending a `vote_id`) adds nothing. Together with Kafka's
//! at-least-once delivery this counts every accepted vote exactly once.

use std::time::Duration;

use bandvote_domain::{RedisKeys, VoteEvent};
use redis::{Script, aio::ConnectionManager};

/// The batch script. KEYS: total, band, album, route, leaderboard, per-second, rank sum,
/// rank average, timeline, dead letters. ARGV: vote marker prefix, dead-letter marker prefix, dedup
/// seconds, vote count, dead-letter count, then six values per vote (id, band, album field, route,
/// rank, second), then one id per dead letter.
const APPLY_BATCH: &str = r"
local prefix, dead_prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local votes, dead = tonumber(ARGV[4]), tonumber(ARGV[5])
local counted, i = 0, 6
for _ = 1, votes do
  local id, band, album, route, rank, second = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  i = i + 6
  if redis.call('SET', prefix .. id, '1', 'NX', 'EX', ttl) then
    counted = counted + 1
    redis.call('HINCRBY', KEYS[2], band, 1)
    local album_votes = redis.call('HINCRBY', KEYS[3], album, 1)
    redis.call('HINCRBY', KEYS[4], route, 1)
    redis.call('ZINCRBY', KEYS[5], 1, band)
    redis.call('HINCRBY', KEYS[6], second, 1)
    local sum = redis.call('HINCRBYFLOAT', KEYS[7], album, rank)
    redis.call('HSET', KEYS[8], album, tostring(tonumber(sum) / album_votes))
  end
end
if counted > 0 then
  redis.call('INCRBY', KEYS[1], counted)
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', '100000', '*', 'votes', counted)
end
local letters = 0
for _ = 1, dead do
  if redis.call('SET', dead_prefix .. ARGV[i], '1', 'NX', 'EX', ttl) then letters = letters + 1 end
  i = i + 1
end
if letters > 0 then redis.call('INCRBY', KEYS[10], letters) end
return {counted, letters}
";

/// What one batch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Votes counted for the first time.
    pub counted: u64,
    /// Votes already counted before (redelivered or re-sent).
    pub duplicates: u64,
    /// Dead letters counted for the first time.
    pub dead_letters: u64,
}

#[derive(Clone)]
pub struct Tally {
    redis: ConnectionManager,
    keys: RedisKeys,
    script: Script,
    dedup_window: Duration,
}

impl Tally {
    pub async fn connect(url: &str, keys: RedisKeys, dedup_window: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let redis = ConnectionManager::new_with_config(client, config).await?;
        Ok(Tally { redis, keys, script: Script::new(APPLY_BATCH), dedup_window })
    }

    /// Counts a batch of votes and dead letters (ids of records sent to the dead-letter topic).
    pub async fn apply<'a>(
        &self,
        votes: impl ExactSizeIterator<Item = &'a VoteEvent>,
        dead_letters: &[String],
    ) -> redis::RedisResult<Applied> {
        let vote_count = votes.len();
        let k = &self.keys;
        let mut invocation = self.script.prepare_invoke();
        for key in [
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
        ] {
            invocation.key(key);
        }
        invocation
            .arg(k.seen_prefix())
            .arg(k.dead_letter_seen_prefix())
            .arg(self.dedup_window.as_secs().max(1))
            .arg(vote_count)
            .arg(dead_letters.len());
        for vote in votes {
            let ballot = &vote.ballot;
            invocation
                .arg(vote.vote_id.as_str())
                .arg(&ballot.band)
                .arg(RedisKeys::album_field(&ballot.band, &ballot.album))
                .arg(vote.route.as_str())
                .arg(ballot.rank.get())
                .arg(vote.received_at_ms.div_euclid(1000));
        }
        for id in dead_letters {
            invocation.arg(id);
        }
        let (counted, dead_letters): (u64, u64) = invocation.invoke_async(&mut self.redis.clone()).await?;
        Ok(Applied { counted, duplicates: vote_count as u64 - counted, dead_letters })
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
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
