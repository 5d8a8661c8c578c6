//! The chaos run: a steady load on the HTTP and gRPC routes while the pipeline's parts are killed
//! one after another, then an exact reckoning.
//!
//! Everything runs on loopback in private processes: a Kafka cluster of three nodes (replication
//! factor 3, `min.insync.replicas=2`), a Redis with its append-only file, the log store's server
//! (`MONGO_SERVER`, as `dev/services` runs it) behind a proxy that can slow it down, one ingest
//! and 2 to 5 consumers (the release or debug binaries beside this one).
//!
//! First the run measures the pipeline's end-to-end capacity on this stack with its own load
//! ([`capacity`]), unless it is given one or a fixed rate, and then offers a share of it (half by
//! default) through every fault. The faults, in order, with steady load between them: a consumer
//! killed with SIGKILL three times; consumers scaled 2→5 (each of the five must hold partitions and
//! count votes, by its own metrics) and back to 2 with SIGTERM; ingest killed with SIGKILL and
//! restarted on the same ports; the Kafka node that leads partition 0 killed with SIGKILL and
//! restarted a few seconds later, then every partition back to three replicas in sync; Redis killed
//! with SIGKILL and restarted from its append-only file; the log store killed with SIGKILL and
//! restarted; the log store slowed down.
//!
//! The load is what a careful client does: every vote carries its own `vote_id`, and a refused vote
//! (or one that got no answer) is sent again with the same id until it is accepted. So Kafka may
//! hold a vote twice, and it must still count and be logged once.
//!
//! The run always ends in a verdict. When a stage does not recover within the limit, the failure is
//! recorded, no further fault is injected, the load stops, refused votes are re-sent for a bounded
//! time, counting and logging get a bounded time to settle, and the reckoning is the same: per
//! band, album and route, the accepted votes == the Redis tallies == the MongoDB documents == the
//! distinct votes in Kafka, no vote lost, none logged or counted twice; then Redis is flushed and
//! rebuilt from the log, and must come back the same. Only a stack that cannot be set up ends
//! without one.

pub mod capacity;
mod load;
pub mod overload;
mod report;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bandvote_consumer::audit::{self, AuditConfig, Counts};
use clap::Parser;

use bandvote_testkit::{
    metric, poll_until,
    stack::{Kafka, Layout, Stack, blocking_without_panic, without_panic},
    wait_until,
};

use crate::load::Load;
pub use crate::{
    load::Ledger,
    report::{LeaderChange, Offered, REPLICAS, Recovery, ReplicaCheck, Report},
};

/// Kafka nodes of the chaos run's cluster.
const KAFKA_NODES: usize = 3;
/// How long a killed Kafka node stays down.
const BROKER_DOWN: Duration = Duration::from_secs(5);
/// How long killed ingest, Redis and log store stay down.
const DOWN: Duration = Duration::from_secs(1);
/// The warm-up's rate, votes/s, its length, and how long its votes may take to settle.
const WARM_UP_RATE: u32 = 100;
const WARM_UP: Duration = Duration::from_secs(5);
const WARM_UP_WITHIN: Duration = Duration::from_secs(180);
/// How long refused votes are re-sent after the load stops.
const RESEND_WITHIN: Duration = Duration::from_secs(60);
/// How long counting and logging may take to settle after the load stops.
const SETTLE_WITHIN: Duration = Duration::from_secs(300);
/// How long the five replicas may take to show that each holds partitions and counts.
const REPLICAS_WITHIN: Duration = Duration::from_secs(30);
/// How long after a fault the votes are taken whose arrival marks the recovery: a stage has
/// recovered when it has done every vote accepted (or sent) up to this long after the fault began.
const MARK_AFTER: Duration = Duration::from_secs(1);
/// Latest accepted ids looked up in the log to confirm a log store's recovery.
const CONFIRM: usize = 2;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-chaos",
    version,
    about = "Measures the pipeline's end-to-end capacity, then offers a share of it on both routes while the \
             pipeline's parts are killed; then exact counts."
)]
pub struct Config {
    /// Offer this fixed rate (votes/s, half on each route) instead of a share of the capacity.
    #[arg(long, conflicts_with = "capacity")]
    pub rate: Option<u32>,
    /// The pipeline's end-to-end capacity (votes/s), if known: skips the measurement.
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Share of the capacity offered during the faults.
    #[arg(long, default_value_t = 0.5)]
    pub load_share: f64,
    /// Length of each step of the capacity measurement.
    #[arg(long, default_value = "5s", value_parser = bandvote_ops::config::parse_duration)]
    pub capacity_step: Duration,
    /// Steady load before and between faults.
    #[arg(long, default_value = "10s", value_parser = bandvote_ops::config::parse_duration)]
    pub settle: Duration,
    /// How long the log store stays slow.
    #[arg(long, default_value = "15s", value_parser = bandvote_ops::config::parse_duration)]
    pub slow_for: Duration,
    /// Delay the slow log store adds to every chunk of bytes, each way.
    #[arg(long, default_value = "250ms", value_parser = bandvote_ops::config::parse_duration)]
    pub slow_delay: Duration,
    /// Longest wait for a stage to recover after a fault; past it the run injects no more faults,
    /// reckons and fails.
    #[arg(long, default_value = "300s", value_parser = bandvote_ops::config::parse_duration)]
    pub recovery_limit: Duration,
    /// Folder of the bandvote-ingest and bandvote-consumer binaries (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write the report (Markdown) here as well as to stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Config {
    /// The short version the test suite runs: every fault, at a fixed modest rate.
    pub fn smoke(bin_dir: PathBuf) -> Self {
        let mut config = Config::parse_from([
            "bandvote-chaos",
            "--rate=150",
            "--settle=3s",
            "--slow-for=4s",
            "--slow-delay=200ms",
            "--recovery-limit=120s",
        ]);
        config.bin_dir = Some(bin_dir);
        config
    }
}

/// Sets up the stack, measures its capacity, runs the faults and reckons. An error means the stack
/// could not be set up; every other outcome is a report.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the binary has a folder")?.to_path_buf(),
    };
    let layout = Layout { kafka_nodes: KAFKA_NODES, ..Layout::default() };
    let mut stack = Stack::start_with(&bin_dir, &layout).await?;
    let outcome = drive(config, &mut stack, started).await;
    stack.shutdown().await;
    outcome
}

async fn drive(config: &Config, stack: &mut Stack, started: Instant) -> anyhow::Result<Report> {
    eprintln!("chaos: the stack is up after {:.0} s", started.elapsed().as_secs_f64());
    let load = Load::start(stack);
    let offered = async {
        warm_up(stack, &load).await?;
        eprintln!("chaos: warmed up after {:.0} s", started.elapsed().as_secs_f64());
        offered_rate(config, stack, &load).await
    };
    let offered = match offered.await {
        Ok(offered) => offered,
        Err(err) => {
            load.finish(Duration::ZERO).await;
            return Err(err);
        }
    };
    eprintln!("chaos: offering {} votes/s through the faults", offered.rate);
    load.set_rate(offered.rate);
    let mut report = Report { offered, ..Report::default() };
    let mut faults = Faults { config, stack, load: &load, report: &mut report };
    // Stopped early means a stage did not recover: that recovery is in the report.
    let _stopped = faults.run().await;

    let ledger = load.finish(RESEND_WITHIN).await;
    let accepted = ledger.accepted.len() as u64;
    if let Err(last) = stack.settled(SETTLE_WITHIN, || (accepted, 0)).await {
        report.problems.push(format!(
            "counting and logging did not settle within {} s after the load stopped ({last}); the counts below are \
             as they were then",
            SETTLE_WITHIN.as_secs()
        ));
    }
    stack.stop_consumers();
    reckon(stack, ledger, &mut report).await;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A light load until every vote is counted and the group's offsets are committed, so that the
/// measurement and the first fault meet a warm pipeline: a new cluster is slow at first (when the
/// consumers first join it creates the group's offsets topic, 50 partitions of three replicas).
async fn warm_up(stack: &Stack, load: &Load) -> anyhow::Result<()> {
    load.set_rate(WARM_UP_RATE);
    tokio::time::sleep(WARM_UP).await;
    load.set_rate(0);
    let pending = || (load.progress().0, load.unanswered_below(load.started()));
    stack.settled(WARM_UP_WITHIN, pending).await.map_err(|last| anyhow::anyhow!("the pipeline did not warm up: {last}"))
}

/// The rate to offer through the faults: fixed, a share of a given capacity, or a share of the
/// capacity measured now.
async fn offered_rate(config: &Config, stack: &Stack, load: &Load) -> anyhow::Result<Offered> {
    let share = config.load_share;
    anyhow::ensure!(share > 0.0 && share <= 1.0, "--load-share must be in (0, 1], not {share}");
    let of = |capacity: u32| ((f64::from(capacity) * share).round() as u32).max(1);
    if let Some(rate) = config.rate {
        return Ok(Offered { rate, capacity: None, share, search: None });
    }
    if let Some(capacity) = config.capacity {
        return Ok(Offered { rate: of(capacity), capacity: Some(capacity), share, search: None });
    }
    eprintln!("chaos: measuring the end-to-end capacity");
    let search = capacity::measure(stack, load, config.capacity_step).await;
    let Some(capacity) = search.capacity else {
        let steps: Vec<String> =
            search.steps.iter().map(|s| format!("{}/s {} of {}", s.rate, s.accepted, s.started)).collect();
        anyhow::bail!("no capacity step passed ({}): the pipeline does not work", steps.join(", "));
    };
    Ok(Offered { rate: of(capacity), capacity: Some(capacity), share, search: Some(search) })
}

/// The fault sequence, with what it found.
struct Faults<'a> {
    config: &'a Config,
    stack: &'a mut Stack,
    load: &'a Load,
    report: &'a mut Report,
}

/// A stage did not recover: the sequence stops there.
struct Stopped;

impl Faults<'_> {
    async fn run(&mut self) -> Result<(), Stopped> {
        let settle = self.config.settle;
        tokio::time::sleep(settle).await;
        for n in 1..=3 {
            self.consumer_killed(n).await?;
            tokio::time::sleep(settle / 2).await;
        }
        self.scaled_up().await?;
        tokio::time::sleep(settle).await;
        self.check_replicas().await;
        self.scaled_down().await?;
        tokio::time::sleep(settle).await;
        self.ingest_killed().await?;
        tokio::time::sleep(settle).await;
        self.leader_killed().await?;
        tokio::time::sleep(settle).await;
        self.redis_killed().await?;
        tokio::time::sleep(settle).await;
        self.log_store_killed().await?;
        tokio::time::sleep(settle).await;
        self.log_store_slowed().await?;
        tokio::time::sleep(settle / 2).await;
        Ok(())
    }

    fn begin(&self) -> Fault {
        Fault { at: Instant::now(), refused: self.load.progress().1, limit: self.config.recovery_limit }
    }

    fn record(&mut self, recovery: Recovery) -> Result<(), Stopped> {
        let state = match &recovery.failure {
            None => format!("recovered after {:.1} s", recovery.recovered_after.as_secs_f64()),
            Some(why) => format!("did not recover: {why}"),
        };
        eprintln!("chaos: {}: {state}", recovery.fault.trim_start());
        let failed = recovery.failure.is_some();
        self.report.recoveries.push(recovery);
        if failed { Err(Stopped) } else { Ok(()) }
    }

    async fn consumer_killed(&mut self, n: usize) -> Result<(), Stopped> {
        let fault = self.begin();
        let name = format!("consumer killed with SIGKILL ({n} of 3)");
        self.stack.kill_consumer(0);
        let recovery = match self.stack.spawn_consumer(0) {
            Ok(()) => fault.until_counted(&name, self.stack, self.load).await,
            Err(err) => fault.failed(&name, self.load, format!("{err:#}")),
        };
        self.record(recovery)
    }

    async fn scaled_up(&mut self) -> Result<(), Stopped> {
        let fault = self.begin();
        let name = format!("consumers scaled 2 → {REPLICAS}");
        let recovery = match (2..REPLICAS).try_for_each(|i| self.stack.spawn_consumer(i)) {
            Ok(()) => fault.until_counted(&name, self.stack, self.load).await,
            Err(err) => fault.failed(&name, self.load, format!("{err:#}")),
        };
        self.record(recovery)
    }

    /// Reads each of the five replicas' metrics until every one holds a partition and has counted
    /// votes (or [`REPLICAS_WITHIN`] passed), and keeps what they said.
    async fn check_replicas(&mut self) {
        let stack = &*self.stack;
        let read = || async move {
            let mut replicas = Vec::new();
            for replica in 0..REPLICAS {
                replicas.push(match stack.consumer_metrics(replica).await {
                    Ok(page) => {
                        let value = |name| metric(&page, name, "").unwrap_or(0.0) as u64;
                        ReplicaCheck {
                            replica,
                            assigned: value("bandvote_consumer_assigned_partitions"),
                            counted: value("bandvote_consumer_votes_counted_total"),
                            unreadable: None,
                        }
                    }
                    Err(why) => ReplicaCheck { replica, assigned: 0, counted: 0, unreadable: Some(why) },
                });
            }
            if replicas.iter().all(ReplicaCheck::worked) { Ok(replicas) } else { Err(replicas) }
        };
        // What the replicas said last is kept whether or not every one of them worked by then.
        let replicas = poll_until(Duration::from_secs(1), REPLICAS_WITHIN, read).await;
        self.report.replicas = replicas.unwrap_or_else(|last| last);
    }

    async fn scaled_down(&mut self) -> Result<(), Stopped> {
        let fault = self.begin();
        for i in 2..REPLICAS {
            self.stack.terminate_consumer(i);
        }
        let name = format!("consumers scaled {REPLICAS} → 2 (SIGTERM)");
        let recovery = fault.until_counted(&name, self.stack, self.load).await;
        self.record(recovery)
    }

    async fn ingest_killed(&mut self) -> Result<(), Stopped> {
        let fault = self.begin();
        let name = format!("ingest killed with SIGKILL, restarted after {} s on the same ports", DOWN.as_secs());
        self.stack.kill_ingest();
        tokio::time::sleep(DOWN).await;
        let recovery = match self.stack.spawn_ingest() {
            Ok(()) => fault.until_accepting(&name, self.load).await,
            Err(err) => fault.failed(&name, self.load, format!("{err:#}")),
        };
        self.record(recovery)?;
        let fault = self.begin();
        let recovery = fault.until_counted("  … and counted again after it", self.stack, self.load).await;
        self.record(recovery)
    }

    /// Kills the node that leads partition 0, watches another take over, restarts the node, and
    /// waits for ingest to accept, Redis to count and every partition to be in sync on all nodes.
    async fn leader_killed(&mut self) -> Result<(), Stopped> {
        let fault = self.begin();
        let (load, limit) = (self.load, self.config.recovery_limit);
        let Kafka::Cluster(cluster) = &mut self.stack.kafka else {
            let recovery = fault.failed("Kafka leader killed", self.load, "the stack has a single broker".into());
            return self.record(recovery);
        };
        let leader = match without_panic(cluster.leader_of(Stack::TOPIC, 0)).await {
            Ok(Some(node)) => node,
            found => {
                let why = format!("partition 0 has no leader to kill ({found:?})");
                let recovery = fault.failed("Kafka leader killed", self.load, why);
                return self.record(recovery);
            }
        };
        let name = format!(
            "Kafka node {leader}, leader of partition 0, killed with SIGKILL, restarted after {} s",
            BROKER_DOWN.as_secs()
        );
        cluster.kill(leader);
        // The outage (another node takes over, the node comes back) runs beside the wait for ingest
        // to accept again, which is timed from the kill.
        let outage = async {
            let took_over = wait_until(Duration::from_secs(30), || async {
                match without_panic(cluster.leader_of(Stack::TOPIC, 0)).await {
                    Ok(Some(node)) if node != leader => Ok(node),
                    found => Err(format!("{found:?}")),
                }
            })
            .await;
            tokio::time::sleep_until((fault.at + BROKER_DOWN).into()).await;
            let restarted = without_panic(cluster.restart(leader)).await;
            (took_over.ok(), restarted.map(|()| Fault { at: Instant::now(), refused: load.progress().1, limit }))
        };
        let (accepting, (took_over, restarted)) = tokio::join!(fault.until_accepting(&name, load), outage);
        self.report.leader = Some(LeaderChange { before: leader, after: took_over });
        let restarted = match restarted {
            Ok(restarted) => restarted,
            Err(why) => {
                let recovery = fault.failed(&name, self.load, format!("the node does not start again: {why}"));
                return self.record(recovery);
            }
        };
        self.record(accepting)?;
        let counting = self.begin();
        let (counted, in_sync) = tokio::join!(
            counting.until_counted("  … and counted again after it", self.stack, self.load),
            restarted.until_in_sync(
                "  … and every partition in sync on all 3 nodes again (from the restart)",
                self.stack,
                self.load
            ),
        );
        self.record(counted)?;
        self.record(in_sync)
    }

    async fn redis_killed(&mut self) -> Result<(), Stopped> {
        let seeks_before = self.redis_behind_seeks().await;
        let fault = self.begin();
        let name =
            format!("Redis killed with SIGKILL, restarted after {} s (AOF on, fsync every second)", DOWN.as_secs());
        self.stack.redis.kill();
        tokio::time::sleep(DOWN).await;
        let redis = &mut self.stack.redis;
        let mut recovery = match blocking_without_panic(|| redis.restart()) {
            Ok(()) => fault.until_counted(&name, self.stack, self.load).await,
            Err(why) => fault.failed(&name, self.load, format!("Redis does not start again: {why}")),
        };
        let seeks = self.redis_behind_seeks().await - seeks_before;
        recovery.note = format!("{seeks} partitions sought back to Redis's position by the consumers");
        self.record(recovery)
    }

    /// The running replicas' `position_seeks_total{reason="redis_behind"}`, summed.
    async fn redis_behind_seeks(&self) -> u64 {
        let mut seeks = 0.0;
        for replica in self.stack.running_consumers() {
            if let Ok(page) = self.stack.consumer_metrics(replica).await {
                seeks +=
                    metric(&page, "bandvote_consumer_position_seeks_total", "reason=\"redis_behind\"").unwrap_or(0.0);
            }
        }
        seeks as u64
    }

    async fn log_store_killed(&mut self) -> Result<(), Stopped> {
        let fault = self.begin();
        let server = self.stack.mongo.kind().name();
        let name = format!("log store ({server}) killed with SIGKILL, restarted after {} s", DOWN.as_secs());
        self.stack.mongo.kill();
        tokio::time::sleep(DOWN).await;
        let mongo = &mut self.stack.mongo;
        let recovery = match blocking_without_panic(|| mongo.restart()) {
            Ok(()) => fault.until_logged(&name, self.stack, self.load).await,
            Err(why) => fault.failed(&name, self.load, format!("the log store does not start again: {why}")),
        };
        self.record(recovery)
    }

    async fn log_store_slowed(&mut self) -> Result<(), Stopped> {
        let (delay, slow_for) = (self.config.slow_delay, self.config.slow_for);
        self.stack.proxy.delay(delay);
        tokio::time::sleep(slow_for).await;
        let fault = self.begin();
        self.stack.proxy.delay(Duration::ZERO);
        let name = format!("log store slowed by {} ms per chunk for {} s", delay.as_millis(), slow_for.as_secs());
        let recovery = fault.until_logged(&name, self.stack, self.load).await;
        self.record(recovery)
    }
}

/// Compares the accepted votes with Redis, the log and Kafka, then flushes and rebuilds Redis. What
/// cannot be read is named in `report.problems`.
async fn reckon(stack: &Stack, ledger: Ledger, report: &mut Report) {
    let audit_config = AuditConfig::parse_from([
        "bandvote-audit".to_owned(),
        "--replay-kafka".into(),
        format!("--kafka-brokers={}", stack.kafka.url()),
        format!("--kafka-topic={}", Stack::TOPIC),
        format!("--kafka-group={}", Stack::GROUP),
        format!("--redis-url={}", stack.redis.url()),
        format!("--redis-key-prefix={}", Stack::PREFIX),
        format!("--mongodb-uri={}", stack.mongo.url()),
        format!("--mongodb-database={}", Stack::DATABASE),
    ]);
    let expected = ledger.counts();
    let describe = |found: Vec<audit::Difference>| found.iter().map(ToString::to_string).collect::<Vec<_>>();
    match audit::run(&audit_config).await {
        Ok(audit) => {
            report.audited = true;
            report.redis_differences = describe(expected.differences(&without_seconds(&audit.redis)));
            report.log_differences = describe(expected.differences(&without_seconds(&audit.log.counts)));
            match &audit.kafka {
                Some(kafka) => {
                    report.kafka_differences = describe(expected.differences(&without_seconds(&kafka.counts)));
                    (report.kafka_records, report.kafka_distinct) = (kafka.records, kafka.counts.total);
                }
                None => report.problems.push("the votes topic was not replayed".into()),
            }
            report.redis = audit.redis.clone();
            report.log = audit.log.counts.clone();
            // Redis against the log again, second by second, as the audit command does.
            report.redis_differences.extend(describe(audit.redis_differences.clone()));
            let leaderboard = async {
                let redis = stack.redis_connection().await?;
                anyhow::Ok(audit::leaderboard_differences(&redis, &stack.keys(), &audit.redis.bands).await?)
            };
            match leaderboard.await {
                Ok(found) => report.redis_differences.extend(describe(found)),
                Err(err) => report.problems.push(format!("the leaderboard could not be read: {err:#}")),
            }
            match flush_and_rebuild(stack, &audit_config).await {
                Ok(rebuilt) => {
                    report.rebuilt = rebuilt.rebuilt.as_ref().map_or(0, |r| r.votes);
                    report.rebuild_differences = describe(audit.redis.differences(&rebuilt.redis));
                }
                Err(err) => report.problems.push(format!("the flush and rebuild failed: {err:#}")),
            }
        }
        Err(err) => report.problems.push(format!("the audit could not run: {err:#}")),
    }
    match stack.logged_ids().await {
        Ok(logged) => {
            report.lost = Some(ledger.accepted.keys().filter(|id| !logged.contains(*id)).count() as u64);
            report.unknown = Some(logged.iter().filter(|id| !ledger.accepted.contains_key(*id)).count() as u64);
            report.logged_distinct = Some(logged.len() as u64);
        }
        Err(err) => report.problems.push(format!("the logged vote ids could not be read: {err:#}")),
    }
    if ledger.sent == 0 {
        report.problems.push("no vote was sent".into());
    }
    report.ledger = ledger;
}

async fn flush_and_rebuild(stack: &Stack, audit_config: &AuditConfig) -> anyhow::Result<audit::Report> {
    stack.flush_redis().await?;
    let mut rebuild_config = audit_config.clone();
    rebuild_config.rebuild = true;
    rebuild_config.replay_kafka = false;
    audit::run(&rebuild_config).await
}

/// The counts without the per-second split, which only ingest's clock knows.
fn without_seconds(counts: &Counts) -> Counts {
    Counts { seconds: BTreeMap::new(), ..counts.clone() }
}

/// The moment a fault began, the refusals until then, and how long its stage may take.
struct Fault {
    at: Instant,
    refused: u64,
    limit: Duration,
}

impl Fault {
    /// Waits until [`MARK_AFTER`] past the fault.
    async fn mark(&self) {
        tokio::time::sleep_until((self.at + MARK_AFTER).into()).await;
    }

    fn recovery(&self, fault: &str, load: &Load, failure: Option<String>) -> Recovery {
        Recovery {
            fault: fault.to_owned(),
            recovered_after: self.at.elapsed(),
            refused: load.progress().1 - self.refused,
            failure,
            note: String::new(),
        }
    }

    fn failed(&self, fault: &str, load: &Load, why: String) -> Recovery {
        self.recovery(fault, load, Some(why))
    }

    /// The recovery once `check` passes, or the failure with its last word after the limit.
    async fn until<F, Fut>(&self, fault: &str, load: &Load, check: F) -> Recovery
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let outcome = wait_until(self.limit.saturating_sub(self.at.elapsed()), check).await;
        let failure = outcome.err().map(|last| format!("not within {:?} ({last})", self.limit));
        self.recovery(fault, load, failure)
    }

    /// Waits until Redis counted as many votes as were accepted up to [`MARK_AFTER`] past the fault.
    async fn until_counted(&self, fault: &str, stack: &Stack, load: &Load) -> Recovery {
        self.mark().await;
        let target = load.progress().0;
        self.until(fault, load, || async {
            let counted = stack.counted().await;
            if counted >= target { Ok(()) } else { Err(format!("{counted} of {target} counted")) }
        })
        .await
    }

    /// Waits until every vote sent up to [`MARK_AFTER`] past the fault was accepted.
    async fn until_accepting(&self, fault: &str, load: &Load) -> Recovery {
        self.mark().await;
        let sent = load.started();
        self.until(fault, load, || async {
            match load.unanswered_below(sent) {
                0 => Ok(()),
                waiting => Err(format!("{waiting} of the votes sent by then not accepted")),
            }
        })
        .await
    }

    /// Waits until the consumers committed (so logged) every record the topic held [`MARK_AFTER`]
    /// past the fault, then looks the latest votes accepted by then up in the log itself. Only the
    /// first part is timed; counting the log reads every document on the local servers (and on FerretDB
    /// even a lookup by `_id` takes seconds), so the final reckoning is what checks every vote.
    async fn until_logged(&self, fault: &str, stack: &Stack, load: &Load) -> Recovery {
        self.mark().await;
        let latest = load.recent_ids();
        let latest = &latest[latest.len().saturating_sub(CONFIRM)..];
        let ends = match wait_until(self.limit, || stack.end_offsets()).await {
            Ok(ends) => ends,
            Err(why) => return self.failed(fault, load, format!("the partitions' ends cannot be read: {why}")),
        };
        let ends = &ends;
        let mut recovery = self
            .until(fault, load, || async move {
                match stack.uncommitted_below(ends).await? {
                    0 => Ok(()),
                    behind => Err(format!("{behind} records not yet logged and committed")),
                }
            })
            .await;
        if recovery.failure.is_none() {
            let found = self
                .until(fault, load, || async {
                    match stack.logged_of(latest, Duration::from_secs(60)).await? {
                        found if found == latest.len() => Ok(()),
                        found => Err(format!("{found} of the latest {} accepted votes in the log", latest.len())),
                    }
                })
                .await;
            if let Some(why) = found.failure {
                recovery.failure = Some(format!("the consumers committed offsets the log does not hold: {why}"));
            } else {
                recovery.note = format!("the latest {} accepted votes found in the log by id", latest.len());
            }
        }
        recovery
    }

    /// Waits until every partition has a leader and all its replicas in sync.
    async fn until_in_sync(&self, fault: &str, stack: &Stack, load: &Load) -> Recovery {
        let Kafka::Cluster(cluster) = &stack.kafka else { return self.recovery(fault, load, None) };
        self.until(fault, load, || async {
            let partitions = without_panic(cluster.partitions(Stack::TOPIC)).await?;
            let in_sync =
                |p: &bandvote_testkit::cluster::PartitionState| p.leader.is_some() && p.isr.len() == p.replicas.len();
            if !partitions.is_empty() && partitions.iter().all(in_sync) {
                Ok(())
            } else {
                Err(format!("{partitions:?}"))
            }
        })
        .await
    }
}

/// Prints a run's report, writes it to `path` when given, and gives the exit code: 0 passed,
/// 1 failed, 2 could not run.
pub fn conclude(
    command: &str,
    outcome: anyhow::Result<(String, bool)>,
    path: Option<&std::path::Path>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    match outcome {
        Ok((text, passed)) => {
            print!("{text}");
            if let Some(path) = path
                && let Err(err) = std::fs::write(path, &text)
            {
                eprintln!("{command}: cannot write {}: {err}", path.display());
                return ExitCode::from(2);
            }
            if passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("{command}: {err:#}");
            ExitCode::from(2)
        }
    }
}
