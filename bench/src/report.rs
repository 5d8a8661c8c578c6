//! The numbers of each step, as a Markdown table for people and JSON for charts.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{capacity::Stop, open_loop::Measured, target::Target};

/// One step of load, summarized. Latencies are of the successful answers, from due time to answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    pub target: String,
    /// `run`, `capacity` or `latency`.
    pub phase: String,
    /// For a latency step, the fraction of the capacity it offered (0.25, 0.5, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_capacity: Option<f64>,
    /// For a capacity step, whether it passed (achieved ≥ 99% of offered and p99 within the bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Votes in each request.
    pub votes_per_request: usize,
    /// Requests per second offered by the schedule.
    pub offered_per_s: f64,
    /// Successful requests per second (see `open_loop::Measured::achieved`).
    pub achieved_per_s: f64,
    /// Votes accepted per second: `achieved_per_s × votes_per_request`.
    pub votes_per_s: f64,
    /// Requests due in the step.
    pub requests: u64,
    pub ok: u64,
    /// Errors by name; `not started` counts requests the cap kept from starting before the deadline.
    pub errors: BTreeMap<String, u64>,
    pub late_starts: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Seconds from the first due time to the last answer.
    pub elapsed_s: f64,
    /// CPU time of the serving processes per accepted vote, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_vote: Option<f64>,
    /// CPU time of the generator per successful request, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_us_per_request: Option<f64>,
}

impl Step {
    /// The summary of a measured step.
    pub fn new(target: Target, phase: &str, votes_per_request: usize, measured: &Measured) -> Self {
        let histogram = &measured.latency;
        let at = |quantile: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile) as f64 / 1000.0);
        let achieved = measured.achieved();
        Step {
            target: target.name().to_owned(),
            phase: phase.to_owned(),
            fraction_of_capacity: None,
            passed: None,
            votes_per_request,
            offered_per_s: measured.schedule.rate,
            achieved_per_s: achieved,
            votes_per_s: achieved * votes_per_request as f64,
            requests: measured.schedule.requests,
            ok: measured.ok,
            errors: measured.errors.clone(),
            late_starts: measured.late_starts,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: (!histogram.is_empty()).then(|| histogram.max() as f64 / 1000.0),
            elapsed_s: measured.elapsed.as_secs_f64(),
            server_cpu_us_per_vote: None,
            generator_cpu_us_per_request: None,
        }
    }

    /// Errors of every kind together.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One target's phase: its steps and, for a capacity search, what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub target: String,
    pub phase: String,
    /// The offered rate of the last capacity step that passed (requests per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_per_s: Option<f64>,
    /// Why the capacity search stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    pub steps: Vec<Step>,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub runs: Vec<Run>,
}

impl Report {
    /// The table of every step, then one line per capacity search.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| target | step | offered/s | achieved/s | p50 | p99 | p99.9 | max | errors | late starts |\n\
             |---|---|--:|--:|--:|--:|--:|--:|---|--:|\n",
        );
        for step in self.runs.iter().flat_map(|run| &run.steps) {
            let target = match step.votes_per_request {
                1 => step.target.clone(),
                votes => format!("{} ×{votes}", step.target),
            };
            let phase = match (step.passed, step.fraction_of_capacity) {
                (Some(true), _) => format!("{} ✓", step.phase),
                (Some(false), _) => format!("{} ✗", step.phase),
                (None, Some(fraction)) => format!("{} {:.0}%", step.phase, fraction * 100.0),
                (None, None) => step.phase.clone(),
            };
            let errors = match step.error_total() {
                0 => "0".to_owned(),
                total => {
                    let kinds: Vec<_> = step.errors.iter().map(|(name, count)| format!("{name}: {count}")).collect();
                    format!("{total} ({})", kinds.join(", "))
                }
            };
            let _ = writeln!(
                out,
                "| {target} | {phase} | {:.0} | {:.0} | {} | {} | {} | {} | {errors} | {} |",
                step.offered_per_s,
                step.achieved_per_s,
                millis(step.p50_ms),
                millis(step.p99_ms),
                millis(step.p999_ms),
                millis(step.max_ms),
                step.late_starts,
            );
        }
        for run in self.runs.iter().filter(|run| run.stopped.is_some()) {
            let stopped = run.stopped.map_or("", Stop::describe);
            let _ = match run.capacity_per_s {
                Some(capacity) => {
                    writeln!(out, "\nCapacity of {}: {capacity:.0} requests/s ({stopped}).", run.target)
                }
                None => writeln!(out, "\nCapacity of {}: not found ({stopped}).", run.target),
            };
        }
        out
    }
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{ms:.0} ms"),
    }
}
