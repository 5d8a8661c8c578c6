//! The capacity search: step the offered rate up by a factor until a step fails, then halve the
//! gap between the last step that passed and the one that failed a few times.
//!
//! A step passes when it achieved at least [`ACHIEVED_SHARE`] of its offered rate and its p99 is
//! within the bound. The capacity is the offered rate of the highest step that passed. The search
//! is written against a measurement function, so that the stepping can be tested without a server.

use std::{future::Future, time::Duration};

use serde::{Deserialize, Serialize};

use crate::report::Step;

/// Share of the offered rate a step must achieve to pass.
pub const ACHIEVED_SHARE: f64 = 0.99;

/// Steps that halve the gap after the first failed step, in the searches that give a capacity:
/// two leave it within a fourth of a factor's gap instead of a whole one.
pub const REFINE: usize = 2;

/// How the search steps.
#[derive(Debug, Clone, Copy)]
pub struct Stepping {
    /// Offered rate of the first step, requests per second.
    pub start_rate: f64,
    /// Each step offers this many times the previous step's rate.
    pub factor: f64,
    /// Highest rate offered; the step that reaches it is the last.
    pub max_rate: f64,
    /// Most steps, the refining ones included.
    pub max_steps: usize,
    /// Highest p99 a passing step may have.
    pub p99_bound: Duration,
    /// After the first failed step, this many steps at the geometric middle of the highest rate
    /// that passed and the lowest that failed.
    pub refine: usize,
}

/// Why the search stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// A step failed: the capacity is below its rate.
    Failed,
    /// Every step passed up to `max_rate`: the capacity is at least that.
    MaxRate,
    /// Every one of `max_steps` steps passed: the capacity is at least the last rate.
    MaxSteps,
    /// The total request budget could not pay for the next step.
    Budget,
}

impl Stop {
    /// A few words for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Stop::Failed => "the highest step that passed; a step above it failed",
            Stop::MaxRate => "at least: every step passed up to --max-rate",
            Stop::MaxSteps => "at least: every step passed within --max-steps",
            Stop::Budget => "at least: the request budget ran out before a step failed",
        }
    }
}

/// What the search found.
#[derive(Debug, Clone)]
pub struct Search {
    pub steps: Vec<Step>,
    pub capacity: Option<f64>,
    pub stopped: Stop,
}

/// Whether `step` passes: achieved ≥ 99% of offered and p99 ≤ `p99_bound`.
pub fn passes(step: &Step, p99_bound: Duration) -> bool {
    let bound_ms = p99_bound.as_secs_f64() * 1000.0;
    step.achieved_per_s >= ACHIEVED_SHARE * step.offered_per_s && step.p99_ms.is_some_and(|p99| p99 <= bound_ms)
}

/// Steps the rate up from `stepping.start_rate`, measuring each step with `measure(rate)`, which
/// returns `None` when the budget cannot pay for a step at that rate; after the first failed step,
/// refines between the highest rate that passed and the lowest that failed.
pub async fn search<F, Fut, E>(stepping: &Stepping, mut measure: F) -> Result<Search, E>
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = Result<Option<Step>, E>>,
{
    let mut steps = Vec::new();
    let mut capacity = None;
    let mut rate = stepping.start_rate.min(stepping.max_rate);
    let mut measure_step = async |rate: f64, steps: &mut Vec<Step>| -> Result<Option<bool>, E> {
        let Some(mut step) = measure(rate).await? else { return Ok(None) };
        let passed = passes(&step, stepping.p99_bound);
        step.passed = Some(passed);
        steps.push(step);
        Ok(Some(passed))
    };
    let stopped = loop {
        if steps.len() >= stepping.max_steps {
            break Stop::MaxSteps;
        }
        let Some(passed) = measure_step(rate, &mut steps).await? else { break Stop::Budget };
        if !passed {
            if let Some(passed_rate) = capacity {
                let (mut low, mut high): (f64, f64) = (passed_rate, rate);
                for _ in 0..stepping.refine {
                    let middle = (low * high).sqrt().round();
                    if middle <= low || middle >= high || steps.len() >= stepping.max_steps {
                        break;
                    }
                    match measure_step(middle, &mut steps).await? {
                        None => break,
                        Some(true) => (low, capacity) = (middle, Some(middle)),
                        Some(false) => high = middle,
                    }
                }
            }
            break Stop::Failed;
        }
        capacity = Some(rate);
        if rate >= stepping.max_rate {
            break Stop::MaxRate;
        }
        // At least one request per second more, so that a small factor still climbs.
        rate = (rate * stepping.factor).round().max(rate + 1.0).min(stepping.max_rate);
    };
    Ok(Search { steps, capacity, stopped })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A pretend server that answers at most `ceiling` requests per second, with a p99 of 5 ms
    /// below `slow_from` requests per second and 80 ms from there.
    fn server(ceiling: f64, slow_from: f64) -> impl FnMut(f64) -> std::future::Ready<Result<Option<Step>, Infallible>> {
        move |rate| {
            let p99 = if rate >= slow_from { 80.0 } else { 5.0 };
            let step =
                Step { offered_per_s: rate, achieved_per_s: rate.min(ceiling), p99_ms: Some(p99), ..Step::default() };
            std::future::ready(Ok(Some(step)))
        }
    }

    fn stepping() -> Stepping {
        Stepping {
            start_rate: 100.0,
            factor: 2.0,
            max_rate: 1_000_000.0,
            max_steps: 20,
            p99_bound: Duration::from_millis(50),
            refine: 0,
        }
    }

    fn offered(search: &Search) -> Vec<f64> {
        search.steps.iter().map(|step| step.offered_per_s).collect()
    }

    #[tokio::test]
    async fn stops_when_achieved_falls_below_offered() {
        let search = search(&stepping(), server(1000.0, f64::INFINITY)).await.unwrap();
        assert_eq!(offered(&search), [100.0, 200.0, 400.0, 800.0, 1600.0]);
        assert_eq!(search.capacity, Some(800.0));
        assert_eq!(search.stopped, Stop::Failed);
        let verdicts: Vec<_> = search.steps.iter().map(|step| step.passed).collect();
        assert_eq!(verdicts, [Some(true), Some(true), Some(true), Some(true), Some(false)]);
    }

    #[tokio::test]
    async fn halves_the_gap_after_the_first_failed_step() {
        let refining = Stepping { refine: 3, ..stepping() };
        let found = search(&refining, server(1000.0, f64::INFINITY)).await.unwrap();
        // 1131 ≈ √(800·1600) fails, 951 ≈ √(800·1131) passes, 1037 ≈ √(951·1131) fails.
        assert_eq!(offered(&found), [100.0, 200.0, 400.0, 800.0, 1600.0, 1131.0, 951.0, 1037.0]);
        assert_eq!((found.capacity, found.stopped), (Some(951.0), Stop::Failed));
        let verdicts: Vec<_> = found.steps[4..].iter().map(|step| step.passed).collect();
        assert_eq!(verdicts, [Some(false), Some(false), Some(true), Some(false)]);

        // Nothing to refine without a step that passed; the step count bounds the refining too.
        let none = search(&refining, server(50.0, f64::INFINITY)).await.unwrap();
        assert_eq!(offered(&none), [100.0]);
        let short = Stepping { max_steps: 6, ..refining };
        let cut = search(&short, server(1000.0, f64::INFINITY)).await.unwrap();
        assert_eq!((offered(&cut).len(), cut.capacity), (6, Some(800.0)));
    }

    #[tokio::test]
    async fn stops_when_p99_passes_the_bound() {
        let search = search(&stepping(), server(f64::INFINITY, 400.0)).await.unwrap();
        assert_eq!(offered(&search), [100.0, 200.0, 400.0]);
        assert_eq!(search.capacity, Some(200.0));
    }

    #[tokio::test]
    async fn a_rate_that_is_just_short_of_99_percent_fails() {
        // 990 of 1000 passes, 989.9 does not.
        let measure = |ceiling: f64| server(ceiling, f64::INFINITY);
        let one_step = Stepping { start_rate: 1000.0, max_steps: 1, ..stepping() };
        let search_990 = search(&one_step, measure(990.0)).await.unwrap();
        assert_eq!(search_990.capacity, Some(1000.0));
        let search_989 = search(&one_step, measure(989.9)).await.unwrap();
        assert_eq!((search_989.capacity, search_989.stopped), (None, Stop::Failed));
    }

    #[tokio::test]
    async fn a_failing_first_step_finds_no_capacity() {
        let search = search(&stepping(), server(50.0, f64::INFINITY)).await.unwrap();
        assert_eq!(offered(&search), [100.0]);
        assert_eq!((search.capacity, search.stopped), (None, Stop::Failed));
    }

    #[tokio::test]
    async fn stops_at_the_highest_rate_and_the_step_count() {
        let capped = Stepping { max_rate: 500.0, ..stepping() };
        let search_rate = search(&capped, server(f64::INFINITY, f64::INFINITY)).await.unwrap();
        assert_eq!(offered(&search_rate), [100.0, 200.0, 400.0, 500.0]);
        assert_eq!((search_rate.capacity, search_rate.stopped), (Some(500.0), Stop::MaxRate));

        let few = Stepping { max_steps: 3, factor: 1.5, ..stepping() };
        let search_steps = search(&few, server(f64::INFINITY, f64::INFINITY)).await.unwrap();
        assert_eq!(offered(&search_steps), [100.0, 150.0, 225.0]);
        assert_eq!((search_steps.capacity, search_steps.stopped), (Some(225.0), Stop::MaxSteps));
    }

    #[tokio::test]
    async fn stops_when_the_budget_runs_out() {
        let mut spent = 0.0;
        let search = search(&stepping(), |rate: f64| {
            spent += rate;
            let step = Step { offered_per_s: rate, achieved_per_s: rate, p99_ms: Some(1.0), ..Step::default() };
            std::future::ready(Ok::<_, Infallible>((spent <= 1000.0).then_some(step)))
        })
        .await
        .unwrap();
        assert_eq!(offered(&search), [100.0, 200.0, 400.0]);
        assert_eq!((search.capacity, search.stopped), (Some(400.0), Stop::Budget));
    }

    #[tokio::test]
    async fn a_step_without_answers_fails() {
        let search = search(&stepping(), |rate| {
            let step = Step { offered_per_s: rate, achieved_per_s: 0.0, p99_ms: None, ..Step::default() };
            std::future::ready(Ok::<_, Infallible>(Some(step)))
        })
        .await
        .unwrap();
        assert_eq!((search.capacity, search.stopped), (None, Stop::Failed));
    }
}
