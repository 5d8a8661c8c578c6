//! The open loop: requests start on a fixed schedule, whatever the answers do.
//!
//! Request `i` of a step is due at `start + i / rate`. A dispatcher on its own thread (a blocking
//! thread, which sleeps with the operating system's timer precision rather than the async timer's
//! millisecond) waits for each due time and spawns the request without waiting for earlier
//! answers. Each latency is measured from the request's due time, not from when it was actually
//! sent: when the server stalls or the generator falls behind, the requests that were due during
//! the stall carry the wait in their latency (no coordinated omission).
//!
//! Outstanding requests are capped. A request that cannot start because of the cap waits for a
//! slot, still timed from its due time, and counts as a late start (more than [`LATE`] after its
//! due time). Requests that still cannot start by the step's deadline (the schedule's end plus
//! one request timeout) are not sent and count as the error `not started`, so every due request
//! is either answered or counted as an error.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::target::{Outcome, Sender};

/// A request that starts later than this after its due time is a late start.
pub const LATE: Duration = Duration::from_millis(1);
/// Longest latency the histogram holds (larger values are recorded as this); one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// One step of load: a rate and how many requests.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Offered requests per second.
    pub rate: f64,
    /// Requests in the step; the step lasts `requests / rate` seconds.
    pub requests: u64,
    /// Most requests outstanding at once.
    pub max_outstanding: usize,
    /// Longest wait for one answer, which also bounds how long a request may wait to start.
    pub timeout: Duration,
}

/// What one step measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub schedule: Schedule,
    /// Latencies of the successful answers, in microseconds from each request's due time.
    pub latency: Histogram<u64>,
    pub ok: u64,
    /// Errors by name (`http 503 overloaded`, `grpc Unavailable`, `timeout`, `not started`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Requests that started more than [`LATE`] after their due time.
    pub late_starts: u64,
    /// Answers (ok or error) per second while they arrived; see [`answer_rate`].
    pub answer_rate: f64,
    /// The whole step, from the first due time until the last answer.
    pub elapsed: Duration,
}

impl Measured {
    /// Requests answered (ok or error) or counted as not started.
    pub fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Successful answers per second: the rate at which answers arrived, times the share of the
    /// due requests that succeeded. When the server keeps up this is the offered rate; when it
    /// falls behind, the answers spread out over a longer time and this drops.
    pub fn achieved(&self) -> f64 {
        self.answer_rate * self.ok as f64 / self.schedule.requests.max(1) as f64
    }
}

struct Recorder {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// When each answer arrived.
    answers: Vec<Instant>,
}

impl Recorder {
    fn record(&mut self, due: Instant, answered: Instant, outcome: Outcome) {
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(answered.duration_since(due).as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.clamp(1, HIGHEST_MICROS));
                self.ok += 1;
            }
            Err(name) => *self.errors.entry(name).or_default() += 1,
        }
        self.answers.push(answered);
    }
}

/// Answers per second over the middle 98% of the answers by arrival time: `k` answers over the
/// span from the first of them to the last, plus one interval of the schedule (so that answers
/// arriving exactly on schedule give exactly the offered rate). Leaving out the earliest and the
/// latest 1% keeps one slow answer at either end of a step from moving the rate; a server that
/// falls behind spreads all of its answers out, which this sees.
pub fn answer_rate(answers: &mut [Instant], offered: f64) -> f64 {
    answers.sort_unstable();
    let trim = answers.len() / 100;
    let middle = &answers[trim..answers.len() - trim];
    match (middle.first(), middle.last()) {
        (Some(first), Some(last)) => middle.len() as f64 / ((*last - *first).as_secs_f64() + 1.0 / offered),
        _ => 0.0,
    }
}

/// Runs one step of open-loop load with `sender` and returns what it measured.
pub async fn run(sender: &Sender, schedule: Schedule) -> anyhow::Result<Measured> {
    anyhow::ensure!(schedule.rate > 0.0 && schedule.rate.is_finite(), "the rate must be above zero");
    anyhow::ensure!(
        (1..=u32::MAX as usize).contains(&schedule.max_outstanding),
        "at most {} requests may be outstanding",
        u32::MAX
    );
    let recorder = Arc::new(Mutex::new(Recorder {
        latency: Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)?,
        ok: 0,
        errors: BTreeMap::new(),
        answers: Vec::with_capacity(schedule.requests.min(10_000_000) as usize),
    }));
    let slots = Arc::new(Semaphore::new(schedule.max_outstanding));
    let runtime = tokio::runtime::Handle::current();
    // A little time to get the dispatcher's thread going before the first due time.
    let start = Instant::now() + Duration::from_millis(5);
    let schedule_end = start + Duration::from_secs_f64(schedule.requests as f64 / schedule.rate);
    let start_deadline = schedule_end + schedule.timeout;

    let dispatcher = tokio::task::spawn_blocking({
        let (sender, recorder, slots) = (sender.clone(), recorder.clone(), slots.clone());
        move || {
            let mut late_starts = 0;
            let mut not_started = 0;
            for i in 0..schedule.requests {
                let due = start + Duration::from_secs_f64(i as f64 / schedule.rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => {
                        let wait = tokio::time::timeout_at(start_deadline.into(), slots.clone().acquire_owned());
                        match runtime.block_on(wait) {
                            Ok(Ok(slot)) => slot,
                            _ => {
                                not_started = schedule.requests - i;
                                break;
                            }
                        }
                    }
                };
                if Instant::now().duration_since(due) > LATE {
                    late_starts += 1;
                }
                let (sender, recorder) = (sender.clone(), recorder.clone());
                runtime.spawn(async move {
                    let outcome = sender.send(i).await;
                    let answered = Instant::now();
                    recorder.lock().expect("the recorder").record(due, answered, outcome);
                    drop(slot);
                });
            }
            (late_starts, not_started)
        }
    });
    let (late_starts, not_started) = dispatcher.await?;
    // Every request still out holds a slot; each ends within its timeout.
    drop(slots.acquire_many(schedule.max_outstanding as u32).await?);

    let mut recorder = recorder.lock().expect("the recorder");
    let mut errors = std::mem::take(&mut recorder.errors);
    if not_started > 0 {
        errors.insert("not started".to_owned(), not_started);
    }
    let answer_rate = answer_rate(&mut recorder.answers, schedule.rate);
    let last_answer = recorder.answers.last().copied();
    Ok(Measured {
        schedule,
        latency: recorder.latency.clone(),
        ok: recorder.ok,
        errors,
        late_starts,
        answer_rate,
        elapsed: last_answer.map_or(Duration::ZERO, |last| last.saturating_duration_since(start)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: &[u64]) -> Vec<Instant> {
        millis.iter().map(|&ms| start + Duration::from_millis(ms)).collect()
    }

    #[test]
    fn answers_on_schedule_give_the_offered_rate() {
        let start = Instant::now();
        // 1000 answers 2 ms apart: 500/s.
        let mut answers = at(start, &(0..1000).map(|i| 3 + 2 * i).collect::<Vec<_>>());
        assert!((answer_rate(&mut answers, 500.0) - 500.0).abs() < 1e-6);
        assert_eq!(answer_rate(&mut at(start, &[7]), 500.0), 500.0);
        assert_eq!(answer_rate(&mut [], 500.0), 0.0);
    }

    #[test]
    fn one_slow_answer_at_the_end_does_not_move_the_rate() {
        let start = Instant::now();
        let mut millis: Vec<_> = (0..1000).map(|i| 3 + 2 * i).collect();
        *millis.last_mut().unwrap() += 200;
        let rate = answer_rate(&mut at(start, &millis), 500.0);
        assert!((rate - 500.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn answers_spread_out_by_a_slow_server_lower_the_rate() {
        let start = Instant::now();
        // Offered 1000/s, answered 4 ms apart: 250/s.
        let mut answers = at(start, &(0..1000).map(|i| 4 * i).collect::<Vec<_>>());
        let rate = answer_rate(&mut answers, 1000.0);
        assert!((rate - 250.0).abs() < 1.0, "{rate}");
    }
}
