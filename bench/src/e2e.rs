//! End to end: from a vote's acceptance (its answer arriving at the client) to its count being
//! visible in Redis.
//!
//! The consumer's script records each decided vote's digest in its partition's re-send memory in
//! the same atomic step that updates the counters, so a vote's digest appears exactly when its
//! count does. Traced votes (see [`crate::target::Trace`]) report their ids when accepted; [`watch`]
//! looks their digests up in every partition's memory of the current generation (one `HMGET` per
//! partition and generation, pipelined) every [`POLL`], and records the time from acceptance to the
//! round that found each one. The poll interval bounds the error (it adds up to one interval).

use std::time::{Duration, Instant, SystemTime};

use bandvote_domain::{RedisKeys, ResendWindow};
use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

/// Pause between two lookups of the waiting markers.
pub const POLL: Duration = Duration::from_millis(2);
/// Most votes looked up in one round (the oldest first).
const ROUND: usize = 500;
/// How long markers are awaited after the last vote was accepted.
const LINGER: Duration = Duration::from_secs(60);

/// What the watcher saw.
#[derive(Debug, Clone)]
pub struct Visible {
    /// Microseconds from acceptance to visibility.
    pub latency: Histogram<u64>,
    /// Votes never seen within [`LINGER`] of the end.
    pub unseen: u64,
    /// Ids of the first votes seen (at most [`SAMPLES`]), to look up in the log afterwards.
    pub samples: Vec<String>,
}

/// Ids kept in [`Visible::samples`].
const SAMPLES: usize = 1000;

impl Visible {
    pub fn percentile_ms(&self, quantile: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

/// Where the counted votes' digests are: the consumer's keys, topic, partitions and re-send window.
#[derive(Debug, Clone)]
pub struct Counted {
    pub keys: RedisKeys,
    pub topic: String,
    pub partitions: i32,
    pub window: ResendWindow,
}

impl Counted {
    /// Finds which of `ids` are counted: every partition's memory of the generations around now.
    async fn find(&self, redis: &mut redis::aio::MultiplexedConnection, ids: &[&str]) -> anyhow::Result<Vec<bool>> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
        let mut generations = vec![self.window.generation_of(now - 1000), self.window.generation_of(now + 1000)];
        generations.dedup();
        let members: Vec<[u8; 16]> = ids.iter().map(|id| RedisKeys::resend_member(None, id)).collect();
        let mut pipe = redis::pipe();
        for partition in 0..self.partitions {
            for &generation in &generations {
                let command = pipe.cmd("HMGET").arg(self.keys.resend(&self.topic, partition, generation));
                for member in &members {
                    command.arg(&member[..]);
                }
            }
        }
        let found: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(redis).await?;
        Ok((0..ids.len()).map(|i| found.iter().any(|memory| memory[i].is_some())).collect())
    }
}

/// Watches for the accepted votes sent to `accepted` to be counted, until the channel closes and
/// every vote was seen (or [`LINGER`] passed).
pub async fn watch(
    redis: &mut redis::aio::MultiplexedConnection,
    counted: &Counted,
    mut accepted: UnboundedReceiver<(String, Instant)>,
) -> anyhow::Result<Visible> {
    let mut latency = Histogram::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    let mut closed_at = None;
    let mut samples = Vec::new();
    loop {
        loop {
            match accepted.try_recv() {
                Ok(vote) => waiting.push(vote),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if waiting.is_empty() && closed_at.is_some() {
            break;
        }
        if closed_at.is_some_and(|closed: Instant| closed.elapsed() > LINGER) {
            break;
        }
        if !waiting.is_empty() {
            let round = waiting.len().min(ROUND);
            let ids: Vec<&str> = waiting[..round].iter().map(|(id, _)| id.as_str()).collect();
            let found = counted.find(redis, &ids).await?;
            let now = Instant::now();
            let mut index = 0;
            waiting.retain(|(id, accepted_at)| {
                let seen = index < round && found[index];
                index += 1;
                if seen {
                    let micros = now.duration_since(*accepted_at).as_micros() as u64;
                    latency.saturating_record(micros.max(1));
                    if samples.len() < SAMPLES {
                        samples.push(id.clone());
                    }
                }
                !seen
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Visible { latency, unseen: waiting.len() as u64, samples })
}
