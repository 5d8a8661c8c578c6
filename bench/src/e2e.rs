//! End to end: from a vote's acceptance (its answer arriving at the client) to its count being
//! visible in Redis.
//!
//! The consumer's script marks each counted vote id (`<prefix>:seen:<id>`) in the same atomic step
//! that updates the counters, so a vote's marker appears exactly when its count does. Traced votes
//! (see [`crate::target::Trace`]) report their ids when accepted; [`watch`] looks their markers up
//! with one `MGET` per round, every [`POLL`], and records the time from acceptance to the round
//! that found each one. The poll interval bounds the error (it adds up to one interval).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

/// Pause between two lookups of the waiting markers.
pub const POLL: Duration = Duration::from_millis(2);
/// Most markers looked up in one round (the oldest first).
const ROUND: usize = 2000;
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

/// Watches the markers of the accepted votes sent to `accepted` until the channel closes and every
/// vote was seen (or [`LINGER`] passed).
pub async fn watch(
    redis: &mut redis::aio::MultiplexedConnection,
    seen_prefix: &str,
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
            let keys: Vec<String> = waiting[..round].iter().map(|(id, _)| format!("{seen_prefix}{id}")).collect();
            let found: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await?;
            let now = Instant::now();
            let mut index = 0;
            waiting.retain(|(id, accepted_at)| {
                let seen = index < round && found[index].is_some();
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
