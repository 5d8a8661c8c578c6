//! The whole benchmark in one run: every route against the same private stack, each next to its
//! peers, repeated and interleaved, then the pipeline end to end.
//!
//! Order of a run (all servers private, on loopback):
//!
//! 1. **Catch-up**: a bare rdkafka producer writes a backlog of real vote events; a bare consumer
//!    reads it back; bare `insert_many` batches fill a scratch collection; then one consumer
//!    replica starts and counts the backlog (Redis) and logs it (MongoDB). Repeated `catchup_rounds`
//!    times, each with a new backlog.
//! 2. **End to end**: with the consumer running, traced single votes (`POST /votes`, each with its
//!    own id) step up until the time from acceptance to the count being visible in Redis passes the
//!    bound; then 25/50/75% of that rate; then the sustained run at 70% of it, after which every
//!    count must be exact.
//! 3. **Ingest**: the consumer stops (the votes wait in Kafka); every route is measured with Kafka
//!    and through the no-op header (the same server and route without Kafka), `rounds` times, the
//!    routes interleaved within each round, each round with the peers (bare producer, kcat,
//!    redis-benchmark, h2load); then the latency phase at 25/50/75/90% of each median capacity.
//! 4. **Locust**, when given: the original's tool against `/rust/send_data`, with its own CPU share.
//!
//! CPU time and memory come from `/proc` for ingest, the consumer, the Wasm front and the generator
//! itself.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use bandvote_ops::config::parse_duration;
use bandvote_testkit::{
    metric, poll_until,
    servers::Kind,
    stack::{Layout, Stack, WasmFront},
};
use serde::{Deserialize, Serialize};

use crate::{
    Step, Target,
    capacity::{self, Stepping, Stop},
    e2e,
    open_loop::{self, Schedule},
    peers::{self, PeerRun},
    suite_report::Spread,
    system::{self, CpuMeter, Memory},
    target::{Endpoints, Sender, Trace},
};

mod catch_up;
mod end_to_end;
mod ingest;

/// How long and how wide a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Seconds: proves the run works (the test suite runs it).
    Smoke,
    /// Under ten minutes: every measurement, shorter and on the main routes.
    Quick,
    /// The report's run: every route, a backlog of one million votes three times, ten minutes
    /// sustained.
    Full,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bandvote-bench-suite", version, about = "Every benchmark of bandvote in one run, with its peers.")]
pub struct SuiteConfig {
    #[arg(long, value_enum, default_value_t = Profile::Quick)]
    pub profile: Profile,
    /// Folder with bandvote-ingest and bandvote-consumer (default: this binary's folder).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the report, the JSON and the charts go.
    #[arg(long, default_value = ".local/bench")]
    pub out: PathBuf,
    /// The Wasm route's checker component (`dev/build-wasm --checker`); the Wasm route is measured,
    /// embedded in its own ingest, when it is given.
    #[arg(long, env = "BANDVOTE_WASM_COMPONENT")]
    pub wasm_component: Option<PathBuf>,
    /// The locust command; Locust is run when it is given.
    #[arg(long)]
    pub locust: Option<PathBuf>,
    /// The locustfile.
    #[arg(long, default_value = "locust/locustfile.py")]
    pub locustfile: PathBuf,
    /// Repetitions of the ingest measurements (default by profile).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Votes in each catch-up backlog (default by profile).
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Length of the sustained end-to-end run (default by profile).
    #[arg(long, value_parser = parse_duration)]
    pub sustain: Option<Duration>,
    /// Measure nothing: draw the charts of this `report.json` of an earlier run into `--out`.
    #[arg(long, value_name = "REPORT_JSON")]
    pub charts_from: Option<PathBuf>,
}

/// The numbers of a profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub profile: Profile,
    pub targets: Vec<Target>,
    pub rounds: usize,
    /// Length of each capacity step after the first estimate.
    pub step: Duration,
    /// Quiet time before each step, so that one step's backlog does not reach into the next.
    pub pause: Duration,
    /// Each capacity step offers this many times the previous one.
    pub factor: f64,
    /// Length of each latency step (25–90% of capacity).
    pub latency_step: Duration,
    pub p99_bound: Duration,
    pub batch: usize,
    pub backlog: u64,
    pub catchup_rounds: usize,
    /// Votes of each bare producer and kcat run in the ingest rounds.
    pub peer_records: u64,
    /// Documents of each bare `insert_many` run.
    pub insert_documents: u64,
    pub redis_requests: u64,
    /// Length of each end-to-end step.
    pub e2e_step: Duration,
    /// Offered votes per second of the first end-to-end step; each next one offers 1.4 times more.
    pub e2e_start: f64,
    pub e2e_max_steps: usize,
    /// Highest visible p99 an end-to-end step may have and pass.
    pub e2e_bound: Duration,
    pub sustain: Duration,
    pub locust_users: usize,
    pub locust_time: Duration,
}

impl Plan {
    pub fn new(config: &SuiteConfig) -> Self {
        use Target::*;
        let (profile, secs) = (config.profile, Duration::from_secs);
        let mut plan = match profile {
            Profile::Smoke => Plan {
                profile,
                targets: vec![HttpVote, GrpcCast],
                rounds: 2,
                step: Duration::from_millis(300),
                pause: Duration::from_millis(200),
                factor: 2.0,
                latency_step: Duration::from_millis(300),
                p99_bound: Duration::from_millis(100),
                batch: 50,
                backlog: 5_000,
                catchup_rounds: 1,
                peer_records: 5_000,
                insert_documents: 2_000,
                redis_requests: 20_000,
                // Two seconds: a one-second step is judged on a few hundred requests, and a
                // scheduler hiccup on a busy test machine then fails the 99% rule.
                e2e_step: secs(2),
                // A test build spends about a millisecond of CPU per vote in ingest and as much in
                // the consumer: 400/s already fell short of the 99% rule on two busy cores.
                e2e_start: 200.0,
                e2e_max_steps: 3,
                e2e_bound: Duration::from_millis(500),
                sustain: secs(3),
                locust_users: 8,
                locust_time: secs(3),
            },
            Profile::Quick => Plan {
                profile,
                targets: vec![HttpVote, GrpcCast, HttpBatch, GrpcBatch],
                rounds: 3,
                step: secs(1),
                pause: Duration::from_millis(300),
                factor: 1.25,
                latency_step: secs(1),
                p99_bound: Duration::from_millis(100),
                batch: 100,
                backlog: 200_000,
                catchup_rounds: 1,
                peer_records: 200_000,
                insert_documents: 50_000,
                redis_requests: 1_000_000,
                e2e_step: secs(4),
                e2e_start: 1000.0,
                e2e_max_steps: 12,
                e2e_bound: Duration::from_millis(500),
                sustain: secs(60),
                locust_users: 64,
                locust_time: secs(15),
            },
            Profile::Full => Plan {
                profile,
                targets: vec![HttpVote, RustSendData, GrpcInsert, GrpcCast, HttpBatch, GrpcBatch],
                rounds: 3,
                step: secs(3),
                pause: secs(1),
                factor: 1.15,
                latency_step: secs(4),
                p99_bound: Duration::from_millis(100),
                batch: 100,
                backlog: 1_000_000,
                catchup_rounds: 3,
                peer_records: 500_000,
                insert_documents: 100_000,
                redis_requests: 2_000_000,
                e2e_step: secs(10),
                e2e_start: 1000.0,
                e2e_max_steps: 15,
                e2e_bound: Duration::from_millis(500),
                sustain: secs(600),
                locust_users: 128,
                locust_time: secs(30),
            },
        };
        if config.wasm_component.is_some() {
            plan.targets.push(WasmVote);
        }
        plan.rounds = config.rounds.unwrap_or(plan.rounds).max(1);
        plan.backlog = config.backlog.unwrap_or(plan.backlog).max(1);
        plan.sustain = config.sustain.unwrap_or(plan.sustain);
        plan
    }
}

/// One route measured with Kafka (`noop: false`) or through the no-op header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Variant {
    pub target: Target,
    pub noop: bool,
}

impl Variant {
    pub fn name(&self) -> String {
        if self.noop { format!("{} (no-op)", self.target.name()) } else { self.target.name().to_owned() }
    }
}

/// One capacity search of one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Search {
    pub variant: String,
    /// 0 for the first estimate, then 1, 2, ...
    pub round: usize,
    /// Requests per second of the last step that passed.
    pub capacity_per_s: Option<f64>,
    pub votes_per_s: Option<f64>,
    pub stopped: Stop,
    /// CPU of the serving processes per vote, at the last step that passed.
    pub server_cpu_us_per_vote: Option<f64>,
    /// CPU of the generator per request, at the last step that passed.
    pub generator_cpu_us_per_request: Option<f64>,
    pub steps: Vec<Step>,
}

/// A catch-up of one backlog by one consumer replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUp {
    pub backlog: u64,
    /// Votes per second counted in Redis, between 5% and 95% of the backlog.
    pub counted_per_s: f64,
    /// Votes per second logged in MongoDB, between 5% and 95% of the backlog.
    pub logged_per_s: f64,
    /// From the consumer's start until every vote was counted and logged.
    pub total_s: f64,
    pub consumer_cpu_us_per_vote: Option<f64>,
    pub consumer_memory: Memory,
    /// (seconds since start, counted, logged), every half second, for the chart.
    pub timeline: Vec<(f64, u64, u64)>,
}

/// One end-to-end step: traced votes at one rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndToEnd {
    pub label: String,
    pub offered_per_s: f64,
    pub accepted_per_s: f64,
    pub ok: u64,
    pub errors: u64,
    /// Answer latency at ingest (from due time).
    pub ingest_p99_ms: Option<f64>,
    /// From acceptance to the count visible in Redis.
    pub visible_p50_ms: Option<f64>,
    pub visible_p99_ms: Option<f64>,
    pub visible_p999_ms: Option<f64>,
    pub visible_max_ms: Option<f64>,
    pub traced: u64,
    pub unseen: u64,
    pub passed: bool,
    pub ingest_cpu_us_per_vote: Option<f64>,
    pub consumer_cpu_us_per_vote: Option<f64>,
}

/// The exact reckoning after the end-to-end runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reckoning {
    /// Votes accepted over the whole run up to the reckoning (backlogs and end to end).
    pub accepted: u64,
    /// The Redis total.
    pub counted: u64,
    /// Votes the consumer logged in MongoDB since the end-to-end phase began, and those accepted then.
    pub logged_since: u64,
    pub accepted_since: u64,
    /// Traced votes looked up by id in MongoDB, and how many were there.
    pub sampled: u64,
    pub sampled_found: u64,
}

impl Reckoning {
    pub fn exact(&self) -> bool {
        self.accepted == self.counted && self.logged_since == self.accepted_since && self.sampled == self.sampled_found
    }
}

/// Everything a suite run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteReport {
    pub plan: Plan,
    pub started: String,
    pub seconds: f64,
    pub machine: String,
    pub searches: Vec<Search>,
    pub latency: Vec<Step>,
    pub peers: Vec<PeerRun>,
    pub catchups: Vec<CatchUp>,
    pub bare_consume: Vec<PeerRun>,
    pub e2e_capacity: Option<f64>,
    pub e2e: Vec<EndToEnd>,
    pub sustained: Option<EndToEnd>,
    pub reckoning: Option<Reckoning>,
    /// Locust's rate and the CPU share of its process.
    pub locust: Option<(PeerRun, f64)>,
    pub ingest_memory: Memory,
    pub wasm_memory: Option<Memory>,
    /// Measurements that could not be made, and why.
    pub not_run: Vec<String>,
}

struct Suite<'a> {
    config: &'a SuiteConfig,
    plan: Plan,
    stack: Stack,
    wasm: Option<WasmFront>,
    /// Votes accepted into the votes topic so far.
    accepted: u64,
    redis: redis::aio::MultiplexedConnection,
    /// For the consumers' metrics.
    http: reqwest::Client,
}

/// A Redis connection that waits as long as a loaded two-core machine may take to answer.
async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?)
}

/// Runs the whole suite and writes the report, the JSON and the charts to `config.out`.
pub async fn run(config: &SuiteConfig) -> anyhow::Result<SuiteReport> {
    let started = Instant::now();
    let plan = Plan::new(config);
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the binary has a folder")?.to_path_buf(),
    };
    std::fs::create_dir_all(config.out.join("logs"))?;
    let layout = Layout {
        ingest_args: vec!["--noop-routes=true".into()],
        consumers: 0,
        log_through_proxy: false,
        kafka_nodes: 1,
        logs: Some(config.out.join("logs")),
    };
    eprintln!("bench: starting Kafka, Redis, {} and ingest", Kind::Mongo.name());
    let stack = Stack::start_with(&bin_dir, &layout).await?;
    let mut report = SuiteReport {
        plan: plan.clone(),
        started: now_utc(),
        seconds: 0.0,
        machine: machine(),
        searches: Vec::new(),
        latency: Vec::new(),
        peers: Vec::new(),
        catchups: Vec::new(),
        bare_consume: Vec::new(),
        e2e_capacity: None,
        e2e: Vec::new(),
        sustained: None,
        reckoning: None,
        locust: None,
        ingest_memory: Memory::default(),
        wasm_memory: None,
        not_run: Vec::new(),
    };
    let wasm = if plan.targets.contains(&Target::WasmVote) {
        let front = async {
            let component = config.wasm_component.as_deref().context("no component")?;
            stack.start_wasm_host(component).await
        };
        match front.await {
            Ok(front) => Some(front),
            Err(error) => {
                report.not_run.push(format!("wasm-vote: {error:#}"));
                None
            }
        }
    } else {
        if config.wasm_component.is_none() {
            report.not_run.push("wasm-vote: no --wasm-component given (dev/bench builds it)".into());
        }
        None
    };
    let redis = redis_connection(&stack.redis.url()).await?;
    let mut suite = Suite { config, plan, stack, wasm, accepted: 0, redis, http: reqwest::Client::new() };
    if suite.wasm.is_none() {
        suite.plan.targets.retain(|&target| target != Target::WasmVote);
        report.plan.targets = suite.plan.targets.clone();
    }

    for round in 1..=suite.plan.catchup_rounds {
        suite.catch_up(round, &mut report).await?;
    }
    suite.end_to_end(&mut report).await?;
    suite.stack.stop_consumers();
    suite.ingest(&mut report).await?;
    if let Some(locust) = &config.locust {
        let http = suite.stack.http_url.clone();
        eprintln!("bench: locust");
        let secs = suite.plan.locust_time.as_secs();
        let dir = config.out.clone();
        match peers::locust(locust, &config.locustfile, &http, "RustSendDataUser", suite.plan.locust_users, secs, &dir)
            .await
        {
            Ok(run) => report.locust = Some(run),
            Err(error) => report.not_run.push(format!("locust: {error:#}")),
        }
    } else {
        report.not_run.push("locust: no --locust given (dev/bench passes the one dev/pytest installs)".into());
    }
    report.ingest_memory = system::memory(suite.stack.ingest_pid())?;
    report.wasm_memory =
        suite.wasm.as_ref().and_then(|front| front.pids().last().and_then(|&p| system::memory(p).ok()));
    report.seconds = started.elapsed().as_secs_f64();
    crate::suite_report::write(&report, &config.out)?;
    Ok(report)
}

impl Suite<'_> {
    fn endpoints(&self, noop: bool, trace: Option<Trace>) -> Endpoints {
        Endpoints {
            http: self.stack.http_url.clone(),
            grpc: self.stack.grpc_url.clone(),
            wasm: self.wasm.as_ref().map_or_else(String::new, |front| front.url.clone()),
            batch: self.plan.batch,
            grpc_connections: 4,
            timeout: Duration::from_secs(10),
            http_pool: 4096,
            noop,
            trace,
        }
    }

    fn server_pids(&self, target: Target) -> Vec<u32> {
        match (&self.wasm, target) {
            (Some(front), Target::WasmVote) => front.pids(),
            _ => vec![self.stack.ingest_pid()],
        }
    }

    async fn counted(&self) -> anyhow::Result<u64> {
        let mut redis = self.redis.clone();
        let total: Option<u64> = redis::cmd("GET").arg(self.stack.keys().total()).query_async(&mut redis).await?;
        Ok(total.unwrap_or(0))
    }

    /// Votes the running consumers logged since they started (their metrics).
    async fn logged(&self) -> u64 {
        let mut total = 0;
        for url in self.stack.consumer_metrics_urls() {
            let text = match self.http.get(&url).send().await {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            total += metric(&text, "bandvote_consumer_votes_logged_total", "").unwrap_or(0.0) as u64;
        }
        total
    }
}

pub(crate) fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map_or_else(|_| "unknown".into(), |out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU model, cores and memory of this machine.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |m| m.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {memory:.0} GiB")
}
