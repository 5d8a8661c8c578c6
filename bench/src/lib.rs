//! An open-loop load generator for every vote route of ingest.
//!
//! It offers a fixed rate of requests to one route at a time and measures each request's latency
//! from the time it was due, in an HDR histogram, so that a server stall shows up in the
//! latencies of every request that was due during it (see [`open_loop`]). Three phases:
//!
//! * `run`: one rate for `--duration`.
//! * `capacity`: the rate stepped up by `--factor` from `--start-rate`, `--step` per step, until a
//!   step achieves less than 99% of its offered rate or its p99 passes `--p99-bound` (see
//!   [`capacity`]). The capacity is the offered rate of the last step that passed.
//! * `latency`: `--duration` at 25, 50, 75 and 90% of `--capacity`, or of a capacity measured
//!   first when none is given.
//!
//! Every invocation is bounded: each step by its schedule plus one request timeout, the number of
//! steps by `--max-steps`, and all requests together by `--max-requests`.

pub mod capacity;
pub mod chart;
pub mod counting;
pub mod e2e;
pub mod logs;
pub mod open_loop;
pub mod peers;
pub mod report;
pub mod suite;
pub mod suite_report;
pub mod system;
pub mod target;

use std::{cell::Cell, path::PathBuf, time::Duration};

use anyhow::{Context as _, ensure};
use bandvote_ops::config::parse_duration;

use crate::{capacity::Stepping, open_loop::Schedule};
pub use crate::{
    report::{Report, Run, Step},
    target::{Endpoints, Sender, Target},
};

/// Shares of the capacity that the latency phase offers.
pub const LATENCY_FRACTIONS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// Which measurement to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// One rate (`--rate`) for `--duration`.
    Run,
    /// Step the rate up until a step fails; report the last step that passed.
    Capacity,
    /// 25/50/75/90% of `--capacity` (measured first when not given), each for `--duration`.
    Latency,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-bench",
    version,
    about = "Open-loop load on ingest's vote routes, with HDR latency histograms."
)]
pub struct Config {
    /// Routes to load, comma separated; each is measured in turn.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub target: Vec<Target>,
    /// Ingest's HTTP port.
    #[arg(long, env = "BENCH_HTTP", default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// Ingest's gRPC port.
    #[arg(long, env = "BENCH_GRPC", default_value = "http://127.0.0.1:50051")]
    pub grpc: String,
    /// The Wasm route (ingest with `WASM_COMPONENT`, or `wasmtime serve`), for `wasm-vote`.
    #[arg(long, env = "BENCH_WASM", default_value = "http://127.0.0.1:8081")]
    pub wasm: String,
    /// Send the `x-bandvote-noop` header: an ingest started with `NOOP_ROUTES=true` then checks,
    /// stamps and encodes each vote and answers without Kafka.
    #[arg(long)]
    pub noop: bool,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Phase::Run)]
    pub phase: Phase,
    /// Offered requests per second in the `run` phase.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Length of the `run` phase and of each `latency` step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered requests per second of the first capacity step.
    #[arg(long, default_value_t = 100.0)]
    pub start_rate: f64,
    /// Each capacity step offers this many times the previous rate.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Length of each capacity step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step: Duration,
    /// Highest p99 latency a capacity step may have and pass.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub p99_bound: Duration,
    /// Highest rate the capacity search offers.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Most steps of the capacity search.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// The capacity (requests per second) for the `latency` phase; measured first when not given.
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Votes per request of `http-batch` and `grpc-batch`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Most requests outstanding at once; a request due while this many are out starts late.
    #[arg(long, default_value_t = 10_000)]
    pub max_outstanding: usize,
    /// Most requests of the whole invocation, all targets and steps together.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
    /// Quiet time before every step but the first, so that a step's backlog does not reach into
    /// the next one.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub pause: Duration,
    /// Longest wait for one answer; past it the request counts as the error `timeout`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// gRPC channels (HTTP/2 connections) to spread the gRPC targets' requests over.
    #[arg(long, default_value_t = 1)]
    pub grpc_connections: usize,
    /// Also write every step's numbers here, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the configured phase against every target in turn.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    ensure!(config.rate > 0.0 && config.start_rate > 0.0, "rates must be above zero");
    ensure!(config.factor > 1.0, "--factor must be above 1");
    ensure!(config.batch >= 1, "--batch must be at least 1");
    ensure!(!config.duration.is_zero() && !config.step.is_zero(), "--duration and --step must be above zero");
    let bench = Bench { config, budget: Cell::new(config.max_requests), steps: Cell::new(0) };
    let mut report = Report::default();
    for &target in &config.target {
        let sender = Sender::new(target, &bench.endpoints())?;
        preflight(&sender).await?;
        match config.phase {
            Phase::Run => {
                let step = bench.measure(&sender, config.rate, config.duration, "run").await?.with_context(|| {
                    format!("{} requests would pass --max-requests", requests_for(config.rate, config.duration))
                })?;
                report.runs.push(Run {
                    target: target.name().into(),
                    phase: "run".into(),
                    capacity_per_s: None,
                    stopped: None,
                    steps: vec![step],
                });
            }
            Phase::Capacity => report.runs.push(bench.capacity(&sender).await?),
            Phase::Latency => {
                let capacity = match config.capacity {
                    Some(capacity) => capacity,
                    None => {
                        let search = bench.capacity(&sender).await?;
                        let capacity = search.capacity_per_s;
                        report.runs.push(search);
                        capacity.with_context(|| {
                            format!("{}: the first capacity step failed; try a lower --start-rate", target.name())
                        })?
                    }
                };
                let mut steps = Vec::new();
                for fraction in LATENCY_FRACTIONS {
                    let Some(mut step) =
                        bench.measure(&sender, capacity * fraction, config.duration, "latency").await?
                    else {
                        break;
                    };
                    step.fraction_of_capacity = Some(fraction);
                    steps.push(step);
                }
                report.runs.push(Run {
                    target: target.name().into(),
                    phase: "latency".into(),
                    capacity_per_s: Some(capacity),
                    stopped: None,
                    steps,
                });
            }
        }
    }
    Ok(report)
}

struct Bench<'a> {
    config: &'a Config,
    /// Requests the invocation may still send.
    budget: Cell<u64>,
    /// Steps measured so far.
    steps: Cell<usize>,
}

impl Bench<'_> {
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            http: self.config.http.clone(),
            grpc: self.config.grpc.clone(),
            wasm: self.config.wasm.clone(),
            noop: self.config.noop,
            trace: None,
            batch: self.config.batch,
            grpc_connections: self.config.grpc_connections,
            timeout: self.config.timeout,
            http_pool: self.config.max_outstanding,
        }
    }

    /// One step at `rate` for `length`, or `None` when the budget cannot pay for it.
    async fn measure(&self, sender: &Sender, rate: f64, length: Duration, phase: &str) -> anyhow::Result<Option<Step>> {
        let requests = requests_for(rate, length);
        let Some(left) = self.budget.get().checked_sub(requests) else { return Ok(None) };
        self.budget.set(left);
        if self.steps.replace(self.steps.get() + 1) > 0 {
            tokio::time::sleep(self.config.pause).await;
        }
        let schedule =
            Schedule { rate, requests, max_outstanding: self.config.max_outstanding, timeout: self.config.timeout };
        let measured = open_loop::run(sender, schedule).await?;
        let target = sender.target();
        Ok(Some(Step::new(target, phase, target.votes_per_request(self.config.batch), &measured)))
    }

    async fn capacity(&self, sender: &Sender) -> anyhow::Result<Run> {
        let stepping = Stepping {
            start_rate: self.config.start_rate,
            factor: self.config.factor,
            max_rate: self.config.max_rate,
            max_steps: self.config.max_steps,
            p99_bound: self.config.p99_bound,
            refine: capacity::REFINE,
        };
        let search =
            capacity::search(&stepping, |rate| self.measure(sender, rate, self.config.step, "capacity")).await?;
        Ok(Run {
            target: sender.target().name().into(),
            phase: "capacity".into(),
            capacity_per_s: search.capacity,
            stopped: Some(search.stopped),
            steps: search.steps,
        })
    }
}

/// Requests in a step of `length` at `rate`: at least one.
pub fn requests_for(rate: f64, length: Duration) -> u64 {
    ((rate * length.as_secs_f64()).round() as u64).max(1)
}

/// One request before measuring, so that a target that is down or refuses votes stops the run
/// with its answer instead of a table of errors.
async fn preflight(sender: &Sender) -> anyhow::Result<()> {
    sender.send(0).await.map_err(|error| anyhow::anyhow!("{} did not accept a vote: {error}", sender.target().name()))
}
