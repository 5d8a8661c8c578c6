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
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use bandvote_chaos::{Layout, Stack};
use bandvote_ops::config::parse_duration;
use bandvote_testkit::servers::{Kind, free_port};
use serde::Serialize;

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

/// How long and how wide a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
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
    /// The Wasm component (dev/build-wasm); the Wasm route is measured when it is given.
    #[arg(long, env = "BANDVOTE_WASM_COMPONENT")]
    pub wasm_component: Option<PathBuf>,
    /// The wasmtime CLI.
    #[arg(long, env = "WASMTIME", default_value = "wasmtime")]
    pub wasmtime: PathBuf,
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
}

/// The numbers of a profile.
#[derive(Debug, Clone, Serialize)]
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
                e2e_start: 400.0,
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// The Wasm front: `wasmtime serve` with the component, and its native producer beside it.
struct WasmFront {
    url: String,
    children: Vec<Child>,
}

impl WasmFront {
    async fn start(config: &SuiteConfig, bin_dir: &Path, stack: &Stack) -> anyhow::Result<Self> {
        let component = config.wasm_component.as_ref().context("no component")?;
        ensure!(component.is_file(), "the Wasm component {} is not built (dev/build-wasm)", component.display());
        let (producer_port, producer_grpc, producer_ops, port) = (free_port(), free_port(), free_port(), free_port());
        let log = |name: &str| -> anyhow::Result<std::fs::File> {
            Ok(std::fs::File::create(config.out.join(format!("logs/{name}.log")))?)
        };
        let producer = Command::new(bin_dir.join("bandvote-ingest"))
            .args([
                "--routes=wasm".to_owned(),
                format!("--port={producer_port}"),
                format!("--grpc-port={producer_grpc}"),
                format!("--ops-port={producer_ops}"),
                format!("--kafka-brokers={}", stack.kafka.url()),
                format!("--kafka-topic={}", Stack::TOPIC),
            ])
            .env("RUST_LOG", "warn")
            .stdout(log("wasm-producer")?)
            .stderr(log("wasm-producer")?)
            .spawn()
            .context("the Wasm route's producer does not start")?;
        let mut front = WasmFront { url: format!("http://127.0.0.1:{port}"), children: vec![producer] };
        let wasmtime = Command::new(&config.wasmtime)
            .args(["serve", "-S", "cli=y", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--env", &format!("INGEST_URL=http://127.0.0.1:{producer_port}")])
            .args(["--env", &format!("INGEST_OPS_URL=http://127.0.0.1:{producer_ops}")])
            .arg(component)
            .stdout(log("wasmtime")?)
            .stderr(log("wasmtime")?)
            .spawn()
            .with_context(|| format!("{} does not start (dev/tools install wasmtime)", config.wasmtime.display()))?;
        front.children.push(wasmtime);
        let ready = format!("{}/readyz", front.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
            ensure!(Instant::now() < deadline, "the Wasm front was not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(front)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for WasmFront {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
        match WasmFront::start(config, &bin_dir, &stack).await {
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
            total += text
                .lines()
                .find_map(|line| line.strip_prefix("bandvote_consumer_votes_logged_total "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        total
    }

    async fn catch_up(&mut self, round: usize, report: &mut SuiteReport) -> anyhow::Result<()> {
        let backlog = self.plan.backlog;
        eprintln!("bench: catch-up {round}: producing a backlog of {backlog} votes");
        let kafka = self.stack.kafka.url();
        let produced = peers::kafka_produce(&kafka, Stack::TOPIC, &format!("backlog{round}"), backlog).await?;
        report.peers.push(produced);
        self.accepted += backlog;
        report.bare_consume.push(peers::kafka_consume(&kafka, Stack::TOPIC, self.accepted).await?);
        let mongo = self.stack.mongo.url();
        let documents = self.plan.insert_documents;
        report.peers.push(peers::insert_many(&mongo, Stack::DATABASE, &format!("c{round}"), documents, 500).await?);

        eprintln!("bench: catch-up {round}: one consumer replica");
        let counted_before = self.counted().await?;
        let started = Instant::now();
        self.stack.spawn_consumer(0)?;
        let pid = *self.stack.consumer_pids().first().context("the consumer runs")?;
        let meter = CpuMeter::start(&[pid])?;
        let mut timeline = Vec::new();
        let deadline = started + Duration::from_secs(1800);
        loop {
            let counted = self.counted().await?.saturating_sub(counted_before);
            let logged = self.logged().await;
            timeline.push((started.elapsed().as_secs_f64(), counted, logged));
            if counted >= backlog && logged >= backlog {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the consumer did not catch up within 30 minutes: {counted} counted, {logged} logged of {backlog}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let total_s = started.elapsed().as_secs_f64();
        let cpu = meter.used()?;
        let consumer_memory = system::memory(pid)?;
        self.stack.terminate_consumer(0);
        let rate = |pick: fn(&(f64, u64, u64)) -> u64| middle_rate(&timeline, pick, backlog);
        let catchup = CatchUp {
            backlog,
            counted_per_s: rate(|point| point.1),
            logged_per_s: rate(|point| point.2),
            total_s,
            consumer_cpu_us_per_vote: system::micros_per(cpu, backlog),
            consumer_memory,
            timeline: thin(&timeline, 0.5),
        };
        eprintln!(
            "bench: catch-up {round}: {:.0} counted/s, {:.0} logged/s, {total_s:.1} s",
            catchup.counted_per_s, catchup.logged_per_s
        );
        report.catchups.push(catchup);
        Ok(())
    }
}

/// Votes per second between the points where 5% and 95% of `total` were done.
fn middle_rate(timeline: &[(f64, u64, u64)], pick: fn(&(f64, u64, u64)) -> u64, total: u64) -> f64 {
    let at = |share: f64| timeline.iter().find(|point| pick(point) as f64 >= share * total as f64);
    match (at(0.05), at(0.95)) {
        (Some(low), Some(high)) if high.0 > low.0 => (pick(high) - pick(low)) as f64 / (high.0 - low.0),
        _ => 0.0,
    }
}

/// The points of a timeline at least `every` seconds apart, and the last.
fn thin(timeline: &[(f64, u64, u64)], every: f64) -> Vec<(f64, u64, u64)> {
    let mut kept: Vec<(f64, u64, u64)> = Vec::new();
    for point in timeline {
        if kept.last().is_none_or(|last| point.0 - last.0 >= every) {
            kept.push(*point);
        }
    }
    if let (Some(last), Some(kept_last)) = (timeline.last(), kept.last())
        && last.0 > kept_last.0
    {
        kept.push(*last);
    }
    kept
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

/// Traced votes per second in an end-to-end step (every n-th vote, whatever the rate).
const TRACED_PER_S: f64 = 250.0;
/// Share of the end-to-end capacity (found with short steps) that the sustained run offers: at
/// 90% a one-minute run fell behind on two cores, the log store being the slowest stage.
const SUSTAINED_SHARE: f64 = 0.7;
/// Traced ids looked up in MongoDB at the end (one find by `_id` each).
const SAMPLED_IDS: usize = 8;

impl Suite<'_> {
    /// One open-loop step of `variant` at `rate` for `length`, with the CPU it cost.
    async fn step(
        &self,
        sender: &Sender,
        variant: Variant,
        rate: f64,
        length: Duration,
        phase: &str,
    ) -> anyhow::Result<Step> {
        tokio::time::sleep(self.plan.pause).await;
        let target = variant.target;
        let schedule = Schedule {
            rate,
            requests: crate::requests_for(rate, length),
            max_outstanding: 10_000,
            timeout: Duration::from_secs(10),
        };
        let server = CpuMeter::start(&self.server_pids(target))?;
        let generator = CpuMeter::start(&[std::process::id()])?;
        let measured = open_loop::run(sender, schedule).await?;
        let votes_per_request = target.votes_per_request(self.plan.batch);
        let mut step = Step::new(target, phase, votes_per_request, &measured);
        step.target = variant.name();
        step.server_cpu_us_per_vote = system::micros_per(server.used()?, measured.ok * votes_per_request as u64);
        step.generator_cpu_us_per_request = system::micros_per(generator.used()?, measured.ok);
        Ok(step)
    }

    async fn search(
        &self,
        variant: Variant,
        stepping: Stepping,
        length: Duration,
        round: usize,
    ) -> anyhow::Result<Search> {
        let sender = Sender::new(variant.target, &self.endpoints(variant.noop, None))?;
        // One request on every connection, so that connecting is not part of the first step.
        for n in 0..8 {
            sender
                .send(n)
                .await
                .map_err(|error| anyhow::anyhow!("{} did not accept a vote: {error}", variant.name()))?;
        }
        let measure = |rate| {
            let sender = &sender;
            async move { self.step(sender, variant, rate, length, "capacity").await.map(Some) }
        };
        let mut found = capacity::search(&stepping, measure).await?;
        if found.capacity.is_none() {
            // One hiccup of a busy machine in the first step should not void the round: the search
            // runs once more; both attempts' steps stay in the report.
            let again = capacity::search(&stepping, measure).await?;
            found = capacity::Search { steps: [found.steps, again.steps].concat(), ..again };
        }
        let last_passed = found.steps.iter().rev().find(|step| step.passed == Some(true));
        let votes = variant.target.votes_per_request(self.plan.batch) as f64;
        let search = Search {
            variant: variant.name(),
            round,
            capacity_per_s: found.capacity,
            votes_per_s: found.capacity.map(|c| c * votes),
            stopped: found.stopped,
            server_cpu_us_per_vote: last_passed.and_then(|step| step.server_cpu_us_per_vote),
            generator_cpu_us_per_request: last_passed.and_then(|step| step.generator_cpu_us_per_request),
            steps: found.steps,
        };
        eprintln!(
            "bench: {} round {round}: {} requests/s",
            search.variant,
            search.capacity_per_s.map_or("none".into(), |c| format!("{c:.0}"))
        );
        Ok(search)
    }

    fn variants(&self) -> Vec<Variant> {
        let mut variants = Vec::new();
        for &target in &self.plan.targets {
            variants.push(Variant { target, noop: false });
            if target != Target::WasmVote {
                variants.push(Variant { target, noop: true });
            }
        }
        variants
    }

    async fn ingest(&mut self, report: &mut SuiteReport) -> anyhow::Result<()> {
        let variants = self.variants();
        let first_rate = if self.plan.profile == Profile::Smoke { 800.0 } else { 1000.0 };
        let mut estimates = BTreeMap::new();
        for &variant in &variants {
            let coarse = Stepping {
                start_rate: first_rate,
                factor: 2.0,
                max_rate: 1_000_000.0,
                max_steps: 20,
                p99_bound: self.plan.p99_bound,
            };
            let length = self.plan.step.min(Duration::from_secs(1));
            let mut search = self.search(variant, coarse, length, 0).await?;
            if search.capacity_per_s.is_none() {
                // Too fast a start for this route (a batch route, the Wasm front): from far lower.
                let lower = Stepping { start_rate: first_rate / 16.0, ..coarse };
                let again = self.search(variant, lower, length, 0).await?;
                search = Search { steps: [search.steps, again.steps].concat(), ..again };
            }
            estimates.insert(variant, search.capacity_per_s.unwrap_or(first_rate / 16.0));
            report.searches.push(search);
        }
        let peer_topic = "bench-peer";
        create_topic(&self.stack.kafka.url(), peer_topic).await?;
        for round in 1..=self.plan.rounds {
            // Each round starts with a different route, so that no route always follows the same one.
            let mut order = variants.clone();
            let shift = (round - 1) * 2 % order.len().max(1);
            order.rotate_left(shift);
            for variant in order {
                let fine = Stepping {
                    start_rate: (estimates[&variant] * 0.75).max(1.0),
                    factor: self.plan.factor,
                    max_rate: 1_000_000.0,
                    max_steps: 20,
                    p99_bound: self.plan.p99_bound,
                };
                report.searches.push(self.search(variant, fine, self.plan.step, round).await?);
            }
            self.peer_round(round, peer_topic, &estimates, report).await;
        }
        for variant in variants {
            let capacities = report.searches.iter().filter(|s| s.round > 0 && s.variant == variant.name());
            let Some(capacity) = Spread::of(capacities.filter_map(|s| s.capacity_per_s)) else { continue };
            let capacity = capacity.median;
            let sender = Sender::new(variant.target, &self.endpoints(variant.noop, None))?;
            for fraction in crate::LATENCY_FRACTIONS {
                let mut step =
                    self.step(&sender, variant, capacity * fraction, self.plan.latency_step, "latency").await?;
                step.fraction_of_capacity = Some(fraction);
                report.latency.push(step);
            }
        }
        Ok(())
    }

    /// The peers of one ingest round; a peer that cannot run is reported, not fatal.
    async fn peer_round(
        &self,
        round: usize,
        topic: &str,
        estimates: &BTreeMap<Variant, f64>,
        report: &mut SuiteReport,
    ) {
        let kafka = self.stack.kafka.url();
        let records = self.plan.peer_records;
        let out = self.config.out.clone();
        let mut outcomes: Vec<anyhow::Result<Vec<PeerRun>>> = vec![
            peers::kafka_produce(&kafka, topic, &format!("peer{round}"), records).await.map(|run| vec![run]),
            peers::kcat(&kafka, topic, &format!("kcat{round}"), records, &out).await.map(|run| vec![run]),
            peers::redis_benchmark("127.0.0.1", self.stack.redis.port(), self.plan.redis_requests).await,
        ];
        for noop in [false, true] {
            let variant = Variant { target: Target::HttpVote, noop };
            if let Some(&estimate) = estimates.get(&variant) {
                let requests = ((estimate * 3.0) as u64).clamp(1000, 300_000);
                let (name, album, year, rank) = bandvote_testkit::vote(0);
                let vote = serde_json::json!({"name": name, "album": album, "year": year, "rank": rank});
                let body = serde_json::to_vec(&vote).expect("JSON");
                let url = format!("{}/votes", self.stack.http_url);
                let run = peers::h2load(&url, &body, requests, 64, noop, &out).await.map(|mut run| {
                    run.peer = format!("h2load {}", variant.name());
                    vec![run]
                });
                outcomes.push(run);
            }
        }
        for outcome in outcomes {
            match outcome {
                Ok(runs) => report.peers.extend(runs),
                Err(error) => {
                    let line = format!("{error:#}");
                    if !report.not_run.contains(&line) {
                        report.not_run.push(line);
                    }
                }
            }
        }
    }
}

/// Creates a topic with the votes topic's partitions (and its dead-letter topic).
async fn create_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let kafka = bandvote_ops::config::KafkaArgs {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        partitions: 6,
        replication_factor: 1,
        create_topics: true,
        security: Default::default(),
    };
    Ok(bandvote_ops::topics::ensure(&kafka).await?)
}

impl Suite<'_> {
    /// One end-to-end step: traced `POST /votes` at `rate` for `length`, the consumer running.
    async fn e2e_step(
        &mut self,
        rate: f64,
        length: Duration,
        label: &str,
        samples: &mut Vec<String>,
    ) -> anyhow::Result<EndToEnd> {
        tokio::time::sleep(self.plan.pause).await;
        let (accepted, watched) = tokio::sync::mpsc::unbounded_channel();
        let run = format!("e2e-{}-{}", label.replace(['%', ' '], ""), self.accepted);
        let every = (rate / TRACED_PER_S).ceil().max(1.0) as u64;
        let sender = Sender::new(Target::HttpVote, &self.endpoints(false, Some(Trace { run, every, accepted })))?;
        let mut redis = self.redis.clone();
        let counted = e2e::Counted {
            keys: self.stack.keys(),
            topic: Stack::TOPIC.to_owned(),
            partitions: Stack::PARTITIONS,
            window: bandvote_domain::ResendWindow::new(Stack::RESEND_WINDOW_MS),
        };
        let watcher = tokio::spawn(async move { e2e::watch(&mut redis, &counted, watched).await });
        let ingest = CpuMeter::start(&[self.stack.ingest_pid()])?;
        let consumer = CpuMeter::start(&self.stack.consumer_pids())?;
        let schedule = Schedule {
            rate,
            requests: crate::requests_for(rate, length),
            max_outstanding: 10_000,
            timeout: Duration::from_secs(10),
        };
        let measured = open_loop::run(&sender, schedule).await?;
        drop(sender);
        let ingest_cpu = ingest.used()?;
        let visible = watcher.await??;
        let consumer_cpu = consumer.used()?;
        self.accepted += measured.ok;
        let room = SAMPLED_IDS.saturating_sub(samples.len()).min(1);
        samples.extend(visible.samples.iter().take(room).cloned());
        let errors = measured.errors.values().sum();
        let step = EndToEnd {
            label: label.to_owned(),
            offered_per_s: rate,
            accepted_per_s: measured.achieved(),
            ok: measured.ok,
            errors,
            ingest_p99_ms: (!measured.latency.is_empty())
                .then(|| measured.latency.value_at_quantile(0.99) as f64 / 1000.0),
            visible_p50_ms: visible.percentile_ms(0.5),
            visible_p99_ms: visible.percentile_ms(0.99),
            visible_p999_ms: visible.percentile_ms(0.999),
            visible_max_ms: (!visible.latency.is_empty()).then(|| visible.latency.max() as f64 / 1000.0),
            traced: visible.latency.len() + visible.unseen,
            unseen: visible.unseen,
            passed: measured.achieved() >= capacity::ACHIEVED_SHARE * rate
                && errors == 0
                && visible.unseen == 0
                && visible.percentile_ms(0.99).is_some_and(|p99| p99 <= self.plan.e2e_bound.as_secs_f64() * 1000.0),
            ingest_cpu_us_per_vote: system::micros_per(ingest_cpu, measured.ok),
            consumer_cpu_us_per_vote: system::micros_per(consumer_cpu, measured.ok),
        };
        eprintln!(
            "bench: end to end {label} at {rate:.0}/s: visible p99 {} ms, {}",
            step.visible_p99_ms.map_or("–".into(), |v| format!("{v:.1}")),
            if step.passed { "passed" } else { "failed" }
        );
        Ok(step)
    }

    async fn end_to_end(&mut self, report: &mut SuiteReport) -> anyhow::Result<()> {
        eprintln!("bench: end to end: one consumer replica, traced votes");
        let accepted_before = self.accepted;
        self.stack.spawn_consumer(0)?;
        let mut samples = Vec::new();
        // The consumer joins its group and catches up on nothing; a short run at a low rate waits for it.
        let warm = self.e2e_step(50.0, Duration::from_secs(1), "warm-up", &mut samples).await?;
        ensure!(warm.ok > 0 && warm.unseen == 0, "the pipeline does not count votes: {warm:?}");

        let mut rate = self.plan.e2e_start;
        let mut capacity = None;
        for _ in 0..self.plan.e2e_max_steps {
            let step = self.e2e_step(rate, self.plan.e2e_step, "search", &mut samples).await?;
            let passed = step.passed;
            report.e2e.push(step);
            if !passed {
                break;
            }
            capacity = Some(rate);
            rate = (rate * 1.4).round();
        }
        report.e2e_capacity = capacity;
        let capacity = capacity
            .with_context(|| format!("the pipeline did not hold the first end-to-end step: {:?}", report.e2e.last()))?;
        for fraction in [0.25, 0.5, 0.75] {
            let label = format!("{:.0}%", fraction * 100.0);
            let step = self.e2e_step(capacity * fraction, self.plan.e2e_step, &label, &mut samples).await?;
            report.e2e.push(step);
        }
        eprintln!("bench: sustained run, {:.0} s", self.plan.sustain.as_secs_f64());
        let sustained = self.e2e_step(capacity * SUSTAINED_SHARE, self.plan.sustain, "sustained", &mut samples).await?;
        report.sustained = Some(sustained);

        // Everything accepted must be counted once and logged once.
        let deadline = Instant::now() + Duration::from_secs(300);
        let accepted_since = self.accepted - accepted_before;
        let (mut counted, mut logged);
        loop {
            counted = self.counted().await?;
            logged = self.logged().await;
            if (counted >= self.accepted && logged >= accepted_since) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A moment more, so that a vote counted twice would show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        counted = self.counted().await?;
        logged = self.logged().await;
        let looked_up = Instant::now();
        let sampled_found =
            self.stack.logged_of(&samples, Duration::from_secs(300)).await.map_err(anyhow::Error::msg)? as u64;
        eprintln!(
            "bench: {} traced ids looked up in MongoDB in {:.1} s",
            samples.len(),
            looked_up.elapsed().as_secs_f64()
        );
        report.reckoning = Some(Reckoning {
            accepted: self.accepted,
            counted,
            logged_since: logged,
            accepted_since,
            sampled: samples.len() as u64,
            sampled_found,
        });
        Ok(())
    }
}
