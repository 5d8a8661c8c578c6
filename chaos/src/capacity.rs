//! The pipeline's end-to-end capacity, measured before the faults on the run's own stack with its
//! own load: a short step search.
//!
//! A step offers one rate for a few seconds, then pauses the load. It passes when the load started
//! at least 99% of the votes due, at least 99% of the votes offered were accepted by two seconds
//! after the step, and by then Redis had counted every vote accepted during the step (and before).
//! The first step offers [`FIRST_RATE`]; each passing step raises the rate by [`FACTOR`] until one
//! fails, and the capacity is the highest rate that passed. If the first step fails, the rate goes
//! down by the same factor until one passes. The search is bounded in steps and in time. Between
//! steps the pipeline drains, so each one starts from nothing waiting.
//!
//! Each step also records how much CPU this process (the load) and the whole machine used, so the
//! report can say whether the load generator was what limited.

use std::time::{Duration, Instant};

use bandvote_testkit::stack::Stack;

use crate::load::Load;

/// The first rate offered, in votes per second.
pub const FIRST_RATE: u32 = 1000;
/// Each step's rate over the previous one while steps pass (and under it while they fail).
pub const FACTOR: f64 = 1.25;
/// Most steps in one search.
pub const MOST_STEPS: usize = 16;
/// Most time one search may take, drains included.
pub const MOST_TIME: Duration = Duration::from_secs(300);
/// Below this rate the search gives up: the pipeline does not work.
pub const LOWEST_RATE: u32 = 50;
/// How long after a step its votes may take to be accepted and counted.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long the pipeline may take to drain after a step.
const DRAIN_WITHIN: Duration = Duration::from_secs(120);
/// Share of the votes due that must be started, and of those offered that must be accepted.
const SHARE: f64 = 0.99;

/// One step of the search.
#[derive(Debug, Clone)]
pub struct Step {
    /// Votes per second offered.
    pub rate: u32,
    pub seconds: f64,
    /// Votes the load started (offered).
    pub started: usize,
    /// Of those, the ones accepted within [`GRACE`] after the step.
    pub accepted: usize,
    /// Votes accepted up to the end of the step, and the ones Redis had counted [`GRACE`] later.
    pub accepted_by_end: u64,
    pub counted: u64,
    /// The load had to wait because too many votes were waiting on answers (the pipeline was slow,
    /// not the generator).
    pub stalled: bool,
    /// Cores this process (the load generator) used during the step.
    pub load_cores: f64,
    /// Share of the machine's CPU time in use during the step.
    pub machine_busy: f64,
}

impl Step {
    /// Votes due at the step's rate over its length.
    pub fn due(&self) -> f64 {
        f64::from(self.rate) * self.seconds
    }

    /// The load started the votes due.
    pub fn load_kept_up(&self) -> bool {
        self.started as f64 >= SHARE * self.due()
    }

    pub fn passed(&self) -> bool {
        self.load_kept_up() && self.accepted as f64 >= SHARE * self.due() && self.counted >= self.accepted_by_end
    }
}

/// What the search found.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub steps: Vec<Step>,
    /// The highest rate that passed, when one did.
    pub capacity: Option<u32>,
    /// The search stopped at its bound on steps or time before a step failed.
    pub cut_short: bool,
}

/// What to do after `steps`.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Try(u32),
    Done(Option<u32>),
}

/// The search's rule: up by [`FACTOR`] while steps pass, down by it while they fail.
pub fn next(steps: &[Step]) -> Next {
    let highest_passed = steps.iter().filter(|s| s.passed()).map(|s| s.rate).max();
    let Some(last) = steps.last() else { return Next::Try(FIRST_RATE) };
    match (last.passed(), highest_passed) {
        // Still going up.
        (true, _) if steps.iter().all(Step::passed) => Next::Try((f64::from(last.rate) * FACTOR).round() as u32),
        // Came down to a rate that passes, or went up to one that fails.
        (true, found) | (false, found @ Some(_)) => Next::Done(found),
        // Nothing passed yet: come down.
        (false, None) => {
            let lower = (f64::from(last.rate) / FACTOR).round() as u32;
            if lower < LOWEST_RATE { Next::Done(None) } else { Next::Try(lower) }
        }
    }
}

/// Runs the search with `load` (paused before and after) on `stack`, each step `length` long.
pub async fn measure(stack: &Stack, load: &Load, length: Duration) -> Search {
    let began = Instant::now();
    let mut search = Search::default();
    loop {
        let rate = match next(&search.steps) {
            Next::Done(capacity) => {
                search.capacity = capacity;
                return search;
            }
            Next::Try(_) if search.steps.len() >= MOST_STEPS || began.elapsed() >= MOST_TIME => {
                search.capacity = search.steps.iter().filter(|s| s.passed()).map(|s| s.rate).max();
                search.cut_short = true;
                return search;
            }
            Next::Try(rate) => rate,
        };
        let step = probe(stack, load, rate, length).await;
        eprintln!(
            "chaos: capacity step {rate} votes/s: {} started, {} accepted, {} of {} counted in time: {}",
            step.started,
            step.accepted,
            step.counted,
            step.accepted_by_end,
            if step.passed() { "passed" } else { "failed" }
        );
        search.steps.push(step);
        // The next step starts from nothing waiting; one that cannot is judged on what it finds.
        let pending = || (load.progress().0, load.unanswered_below(load.started()));
        let _ = stack.settled(DRAIN_WITHIN, pending).await;
    }
}

/// Offers `rate` for `length`, pauses the load and judges the step [`GRACE`] later.
async fn probe(stack: &Stack, load: &Load, rate: u32, length: Duration) -> Step {
    let (cpu, machine) = (process_cpu_seconds(), machine_cpu());
    let started_at = Instant::now();
    let (first, stalls) = (load.started(), load.stalls());
    load.set_rate(rate);
    tokio::time::sleep(length).await;
    load.set_rate(0);
    let seconds = started_at.elapsed().as_secs_f64();
    let (last, accepted_by_end) = (load.started(), load.progress().0);
    let load_cores = (process_cpu_seconds() - cpu) / seconds;
    let machine_busy = machine_cpu().busy_since(&machine);
    tokio::time::sleep(GRACE).await;
    Step {
        rate,
        seconds,
        started: last - first,
        accepted: load.answered_of(first..last),
        accepted_by_end,
        counted: stack.counted().await,
        stalled: load.stalls() > stalls,
        load_cores,
        machine_busy,
    }
}

/// CPU seconds this process used so far (user and system, every thread).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // utime and stime are fields 14 and 15, that is 12 and 13 after the name; USER_HZ is 100.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU time so far: (busy, total), in ticks.
#[derive(Debug, Clone, Copy)]
struct MachineCpu {
    busy: f64,
    total: f64,
}

impl MachineCpu {
    fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total - earlier.total;
        if total > 0.0 { (self.busy - earlier.busy) / total } else { 0.0 }
    }
}

fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let times: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let total: f64 = times.iter().sum();
    // idle and iowait are the fourth and fifth.
    let idle = times.get(3).copied().unwrap_or(0.0) + times.get(4).copied().unwrap_or(0.0);
    MachineCpu { busy: total - idle, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step at `rate` on a pipeline that takes at most `capacity`.
    fn step(rate: u32, capacity: u32) -> Step {
        let due = f64::from(rate) * 5.0;
        let accepted = if rate <= capacity { due as usize } else { (due * 0.9) as usize };
        Step {
            rate,
            seconds: 5.0,
            started: due as usize,
            accepted,
            accepted_by_end: accepted as u64,
            counted: accepted as u64,
            stalled: false,
            load_cores: 0.3,
            machine_busy: 0.9,
        }
    }

    fn search(capacity: u32) -> (Vec<u32>, Option<u32>) {
        let mut steps = Vec::new();
        loop {
            match next(&steps) {
                Next::Try(rate) => steps.push(step(rate, capacity)),
                Next::Done(found) => return (steps.iter().map(|s| s.rate).collect(), found),
            }
        }
    }

    #[test]
    fn the_rate_goes_up_until_a_step_fails() {
        assert_eq!(search(2000), (vec![1000, 1250, 1563, 1954, 2443], Some(1954)));
    }

    #[test]
    fn the_rate_comes_down_until_a_step_passes() {
        assert_eq!(search(700), (vec![1000, 800, 640], Some(640)));
    }

    #[test]
    fn a_pipeline_that_takes_nothing_has_no_capacity() {
        let (rates, found) = search(10);
        assert_eq!(found, None);
        assert!(rates.last().is_some_and(|&r| (LOWEST_RATE..70).contains(&r)), "{rates:?}");
    }

    #[test]
    fn a_step_fails_when_redis_has_not_counted_every_accepted_vote_or_the_load_fell_behind() {
        let mut late = step(1000, 2000);
        late.counted -= 1;
        assert!(!late.passed());
        let mut slow_load = step(1000, 2000);
        slow_load.started = 4000;
        slow_load.accepted = 4000;
        assert!(!slow_load.load_kept_up() && !slow_load.passed());
    }
}
