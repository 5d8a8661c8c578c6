//! What the counting step already knows of a vote, read before it is published: the common case
//! of a refusal answered at once, instead of an `accepted` that the consumer would then refuse.
//!
//! The consumer keeps, per partition, each voter's counted votes and, within the re-send window,
//! what became of every vote (`consumer/src/tally.rs`). Ingest knows the partition a vote goes to
//! ([`VoteEvent::partition`], Kafka's own key hash, which its producer uses), so one read-only
//! script per partition tells, for each vote: decided before (with the same content: the same
//! answer again; with other content: `vote_id_conflict`), or how much of the rule its voter has used.
//!
//! This is an early answer, not the guarantee: two votes racing through two ingest processes can
//! both pass here, and the consumer, which applies the rule atomically, refuses the one over it.
//! When Redis does not answer in time the check is skipped and the consumer decides alone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bandvote_domain::{Contest, RedisKeys, Refused, ResendWindow, VoteEvent};
use redis::{Script, aio::ConnectionManager};
use tokio::sync::OnceCell;

use crate::publisher::Publisher;

/// Longest wait for Redis before the check is skipped.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// The read-only check for the votes of one partition. KEYS: the partition's voter counts, then the
/// re-send hashes of consecutive generations. ARGV: how many votes; then per vote its digest, its
/// voter (`''`: none), its band. Returns per vote the re-send memory's value (or false), the votes
/// its voter has counted, and those for its band.
const CHECK_PARTITION: &str = r"#!lua flags=no-writes
local n = tonumber(ARGV[1])
local out = {}
for k = 1, n do
  local digest, voter, band = ARGV[3 * k - 1], ARGV[3 * k], ARGV[3 * k + 1]
  local known = false
  for g = 2, #KEYS do
    local value = redis.call('HGET', KEYS[g], digest)
    if value then known = value; break end
  end
  local used, used_band = 0, 0
  if voter ~= '' then
    used = tonumber(redis.call('HGET', KEYS[1], voter) or '0')
    used_band = tonumber(redis.call('HGET', KEYS[1], voter .. '|' .. band) or '0')
  end
  out[#out + 1] = known
  out[#out + 1] = used
  out[#out + 1] = used_band
end
return out
";

/// The votes whose standing Redis may know: those with the client's own id (a re-send) or a voter
/// (the rule). A vote with a fresh id and no voter is new.
fn asked(events: &[VoteEvent], fresh: &[bool]) -> Vec<usize> {
    (0..events.len())
        .filter(|&i| !fresh.get(i).copied().unwrap_or(false) || events[i].ballot.voter_id.is_some())
        .collect()
}

/// What the counting step knows of a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing against it: publish it.
    New,
    /// The same vote was counted before: it is accepted already.
    Counted,
    /// It is, or would be, refused.
    Refused(Refused),
}

/// The Redis the consumer counts in, read by ingest.
#[derive(Clone)]
pub struct Standings {
    redis: ConnectionManager,
    keys: RedisKeys,
    window: ResendWindow,
    contest: Arc<Contest>,
    script: Script,
    partitions: Arc<OnceCell<i32>>,
    publisher: Publisher,
}

impl Standings {
    pub async fn connect(
        url: &str,
        keys: RedisKeys,
        window: Duration,
        contest: Arc<Contest>,
        publisher: Publisher,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CHECK_TIMEOUT))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_with_config(client, config).await?;
        Ok(Standings {
            redis,
            keys,
            window: ResendWindow::new(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)),
            contest,
            script: Script::new(CHECK_PARTITION),
            partitions: Arc::new(OnceCell::new()),
            publisher,
        })
    }

    /// The standing of each vote, in order, as the counting step would see them one after another
    /// (a batch's later votes count the earlier ones against the rule). `None` when Redis or Kafka's
    /// metadata did not answer in time: the consumer decides alone.
    ///
    /// `fresh[i]` says that vote `i`'s id was made here, just now: the counting step cannot know
    /// it, so a fresh vote without a voter is new without asking Redis (and a batch of only such
    /// votes asks nothing).
    pub async fn of(&self, events: &[VoteEvent], fresh: &[bool]) -> Option<Vec<Standing>> {
        let asked = asked(events, fresh);
        if asked.is_empty() {
            return Some(vec![Standing::New; events.len()]);
        }
        let partitions = match self.partitions.get_or_try_init(|| self.publisher.partitions()).await {
            Ok(partitions) => *partitions,
            Err(err) => {
                tracing::debug!(error = %err, "no partition count yet; votes are not checked before publishing");
                return None;
            }
        };
        let mut by_partition: HashMap<i32, Vec<usize>> = HashMap::new();
        for index in asked {
            by_partition.entry(events[index].partition(partitions)).or_default().push(index);
        }
        let now = events.first().map_or(0, |e| e.received_at_ms);
        let generations = self.window.lookups(self.window.generation_of(now));
        let checks = by_partition.iter().map(|(&partition, indexes)| {
            let mut invocation = self.script.prepare_invoke();
            invocation.key(self.keys.voters(self.publisher.topic(), partition));
            for generation in generations.clone() {
                invocation.key(self.keys.resend(self.publisher.topic(), partition, generation));
            }
            invocation.arg(indexes.len());
            for &index in indexes {
                let event = &events[index];
                let ballot = &event.ballot;
                invocation
                    .arg(&RedisKeys::resend_member(ballot.voter_id.as_deref(), event.vote_id.as_str())[..])
                    .arg(ballot.voter_id.as_deref().unwrap_or(""))
                    .arg(&ballot.band);
            }
            let mut redis = self.redis.clone();
            async move {
                let reply: redis::RedisResult<Vec<redis::Value>> = invocation.invoke_async(&mut redis).await;
                (indexes, reply)
            }
        });
        let replies = tokio::time::timeout(CHECK_TIMEOUT * 2, futures::future::join_all(checks)).await.ok()?;
        let mut known = vec![(None, 0, 0); events.len()];
        for (indexes, reply) in replies {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    metrics::counter!("bandvote_ingest_standing_unknown_total").increment(indexes.len() as u64);
                    tracing::debug!(error = %err, "Redis did not tell the votes' standing; publishing unchecked");
                    return None;
                }
            };
            for (chunk, &index) in reply.chunks(3).zip(indexes) {
                use redis::FromRedisValue as _;
                let memory = Option::<Vec<u8>>::from_redis_value_ref(&chunk[0]).ok().flatten();
                let used = u32::from_redis_value_ref(&chunk[1]).unwrap_or(0);
                let used_band = u32::from_redis_value_ref(&chunk[2]).unwrap_or(0);
                known[index] = (memory, used, used_band);
            }
        }
        Some(self.decide(events, known))
    }

    /// The counting step's rules applied to what Redis said, vote after vote.
    fn decide(&self, events: &[VoteEvent], known: Vec<(Option<Vec<u8>>, u32, u32)>) -> Vec<Standing> {
        let rule = self.contest.voters;
        let mut used: HashMap<String, u32> = HashMap::new();
        events
            .iter()
            .zip(known)
            .map(|(event, (memory, voter_used, band_used))| {
                if let Some(memory) = memory {
                    let same = memory.get(1..) == Some(&event.content_fingerprint()[..]);
                    return match (same, memory.first().map(|&m| char::from(m))) {
                        (true, Some('C')) => Standing::Counted,
                        (true, Some(mark)) => {
                            Standing::Refused(Refused::from_mark(mark).unwrap_or(Refused::VoteIdConflict))
                        }
                        _ => Standing::Refused(Refused::VoteIdConflict),
                    };
                }
                let Some(voter) = &event.ballot.voter_id else { return Standing::New };
                let all = used.entry(voter.clone()).or_insert(voter_used);
                if rule.max_votes.is_some_and(|max| *all >= max) {
                    return Standing::Refused(Refused::LimitReached);
                }
                let band = used.entry(format!("{voter}|{}", event.ballot.band)).or_insert(band_used);
                if rule.max_votes_per_band.is_some_and(|max| *band >= max) {
                    return Standing::Refused(Refused::BandLimitReached);
                }
                *band += 1;
                *used.get_mut(voter).expect("counted above") += 1;
                Standing::New
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bandvote_domain::{Ballot, Route};

    use super::*;

    #[test]
    fn only_votes_redis_may_know_are_asked_about() {
        let event = |vote_id: &str, voter: Option<&str>| {
            let mut vote =
                serde_json::json!({"name": "A", "album": "B", "year": "1997", "rank": "1", "vote_id": vote_id});
            if let Some(voter) = voter {
                vote["voter_id"] = voter.into();
            }
            let ballot = Ballot::from_json(&vote).expect("a ballot");
            VoteEvent { vote_id: ballot.vote_id.clone().expect("an id"), ballot, route: Route::Http, received_at_ms: 0 }
        };
        let events =
            [event("mine", None), event("made-0", None), event("made-1", Some("ana")), event("again", Some("ana"))];
        // The client's ids (0, 3) may be re-sends; the fresh one with a voter (2) counts against the rule.
        assert_eq!(asked(&events, &[false, true, true, false]), [0, 2, 3]);
        assert_eq!(asked(&events[1..2], &[true]), Vec::<usize>::new(), "a fresh anonymous vote asks nothing");
    }
}
