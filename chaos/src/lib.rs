//! The chaos run: a steady load on the HTTP and gRPC routes while the pipeline's parts fail one
//! after another, then an exact reckoning.
//!
//! Everything runs on loopback in private processes: a Kafka broker, a Redis with its
//! append-only file, a FerretDB behind a proxy that can slow it down, one ingest and 2 to 5
//! consumers (the release or debug binaries beside this one). The faults, in order: the consumer
//! killed with SIGKILL three times, consumers scaled 2→5→2, the Kafka broker restarted, Redis
//! restarted, the log store restarted, the log store slowed down.
//!
//! The load is what a careful client does: every vote carries its own `vote_id`, and a refused vote
//! is sent again with the same id until it is accepted. At the end every vote sent has been
//! accepted, so the check is exact: per band, album and route, the accepted votes == the Redis
//! tallies == the MongoDB documents == the distinct votes in Kafka, with no vote lost and none
//! logged twice; then Redis is flushed and rebuilt from the log, and must come back the same.

mod load;
pub mod overload;
mod stack;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use bandvote_consumer::audit::{self, AuditConfig, Counts};
use clap::Parser;

pub use crate::{
    load::Ledger,
    stack::{Layout, Stack},
};

/// Longest wait for a stage to catch up after a fault; past it the run fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-chaos",
    version,
    about = "Steady load on both routes while the pipeline's parts fail; then exact counts."
)]
pub struct Config {
    /// Votes offered per second, half on each route.
    #[arg(long, default_value_t = 250)]
    pub rate: u32,
    /// Steady load before and between faults.
    #[arg(long, default_value = "10s", value_parser = bandvote_ops::config::parse_duration)]
    pub settle: Duration,
    /// How long the log store stays slow.
    #[arg(long, default_value = "15s", value_parser = bandvote_ops::config::parse_duration)]
    pub slow_for: Duration,
    /// Delay the slow log store adds to every chunk of bytes, each way.
    #[arg(long, default_value = "250ms", value_parser = bandvote_ops::config::parse_duration)]
    pub slow_delay: Duration,
    /// Folder of the bandvote-ingest and bandvote-consumer binaries (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write the report (Markdown) here as well as to stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Config {
    /// The short version the test suite runs.
    pub fn smoke(bin_dir: PathBuf) -> Self {
        let mut config =
            Config::parse_from(["bandvote-chaos", "--rate=100", "--settle=3s", "--slow-for=4s", "--slow-delay=200ms"]);
        config.bin_dir = Some(bin_dir);
        config
    }
}

/// How one fault went.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub fault: String,
    /// From the fault until the stage it hit had caught up with every vote accepted before it.
    pub recovered_after: Duration,
    /// Answers refusing a vote (503 / UNAVAILABLE / RESOURCE_EXHAUSTED / no answer) meanwhile.
    pub refused: u64,
}

/// What the run found.
#[derive(Debug, Default)]
pub struct Report {
    pub elapsed: Duration,
    pub rate: u32,
    pub ledger: Ledger,
    pub recoveries: Vec<Recovery>,
    pub redis: Counts,
    pub log: Counts,
    pub kafka_records: u64,
    pub kafka_distinct: u64,
    /// Accepted votes missing from the log.
    pub lost: u64,
    /// Log documents whose vote was never sent (must be none).
    pub unknown: u64,
    /// Distinct vote ids in the log.
    pub logged_distinct: u64,
    pub redis_differences: Vec<String>,
    pub log_differences: Vec<String>,
    pub kafka_differences: Vec<String>,
    /// Votes the rebuild added after Redis was flushed.
    pub rebuilt: i64,
    pub rebuild_differences: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.unknown == 0
            && self.duplicates() == 0
            && self.ledger.unexpected.is_empty()
            && self.ledger.pending == 0
            && self.redis_differences.is_empty()
            && self.log_differences.is_empty()
            && self.kafka_differences.is_empty()
            && self.rebuild_differences.is_empty()
            && self.rebuilt == self.ledger.accepted.len() as i64
    }

    pub fn markdown(&self) -> String {
        let l = &self.ledger;
        let mut out = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "Chaos run {verdict} in {:.0} s, offered {} votes/s over HTTP and gRPC.\n",
            self.elapsed.as_secs_f64(),
            self.rate
        );
        let _ = writeln!(out, "| | votes |\n|---|---:|");
        let _ = writeln!(out, "| sent (distinct vote ids) | {} |", l.sent);
        let _ = writeln!(out, "| accepted | {} |", l.accepted.len());
        let _ = writeln!(out, "| answers refusing a vote (then re-sent with the same id) | {} |", l.refused);
        let _ = writeln!(out, "| never accepted by the end | {} |", l.pending);
        let _ = writeln!(out, "| answers that were neither accepted nor refused | {} |", l.unexpected.len());
        let _ = writeln!(out, "| counted in Redis | {} |", self.redis.total);
        let _ = writeln!(out, "| logged in MongoDB | {} |", self.log.total);
        let _ =
            writeln!(out, "| records in Kafka / distinct votes | {} / {} |", self.kafka_records, self.kafka_distinct);
        let _ = writeln!(out, "| **lost** (accepted, not logged) | **{}** |", self.lost);
        let _ = writeln!(out, "| **duplicates** (logged or counted twice) | **{}** |", self.duplicates());
        let _ = writeln!(out, "| logged but never sent | {} |", self.unknown);
        let _ = writeln!(out, "| counted again by the rebuild after a Redis flush | {} |", self.rebuilt);
        let _ = writeln!(out, "\n| fault | recovered after | refused meanwhile |\n|---|---:|---:|");
        for r in &self.recoveries {
            let _ = writeln!(out, "| {} | {:.1} s | {} |", r.fault, r.recovered_after.as_secs_f64(), r.refused);
        }
        for (what, found) in [
            ("Redis against the accepted votes", &self.redis_differences),
            ("MongoDB against the accepted votes", &self.log_differences),
            ("Kafka against the accepted votes", &self.kafka_differences),
            ("Redis after the rebuild against before the flush", &self.rebuild_differences),
        ] {
            let state =
                if found.is_empty() { "equal per band, album, route and second".to_owned() } else { found.join("; ") };
            let _ = writeln!(out, "\n{what}: {state}");
        }
        for unexpected in l.unexpected.iter().take(10) {
            let _ = writeln!(out, "\nunexpected answer: {unexpected}");
        }
        out
    }

    /// Documents beyond the distinct vote ids in the log, plus votes counted beyond those accepted.
    pub fn duplicates(&self) -> u64 {
        self.log.total.saturating_sub(self.logged_distinct)
            + self.redis.total.saturating_sub(self.ledger.accepted.len() as u64)
    }
}

/// Runs the whole chaos sequence and the reckoning.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the binary has a folder")?.to_path_buf(),
    };
    let mut stack = Stack::start(&bin_dir).await?;
    let load = load::Load::start(&stack, config.rate);
    let mut recoveries = Vec::new();
    tokio::time::sleep(config.settle).await;

    for n in 1..=3 {
        let fault = Fault::begin(&load).await;
        stack.kill_consumer(0);
        stack.spawn_consumer(0)?;
        recoveries.push(fault.until_counted(&format!("consumer killed with SIGKILL ({n} of 3)"), &stack, &load).await?);
        tokio::time::sleep(config.settle / 2).await;
    }

    let fault = Fault::begin(&load).await;
    for i in 2..5 {
        stack.spawn_consumer(i)?;
    }
    recoveries.push(fault.until_counted("consumers scaled 2 → 5", &stack, &load).await?);
    tokio::time::sleep(config.settle).await;
    let fault = Fault::begin(&load).await;
    for i in 2..5 {
        stack.terminate_consumer(i);
    }
    recoveries.push(fault.until_counted("consumers scaled 5 → 2 (SIGTERM)", &stack, &load).await?);
    tokio::time::sleep(config.settle).await;

    let fault = Fault::begin(&load).await;
    stack.kafka.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.kafka.restart();
    recoveries.push(fault.until_accepting("Kafka broker stopped 2 s and restarted", &load).await?);
    let fault = Fault::begin(&load).await;
    recoveries.push(fault.until_counted("  … and counting again after it", &stack, &load).await?);
    tokio::time::sleep(config.settle).await;

    let fault = Fault::begin(&load).await;
    stack.redis.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.redis.restart();
    recoveries.push(fault.until_counted("Redis stopped 1 s and restarted (AOF on)", &stack, &load).await?);
    tokio::time::sleep(config.settle).await;

    let fault = Fault::begin(&load).await;
    stack.mongo.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.mongo.restart();
    recoveries.push(fault.until_logged("log store stopped 1 s and restarted", &stack, &load).await?);
    tokio::time::sleep(config.settle).await;

    stack.proxy.delay(config.slow_delay);
    tokio::time::sleep(config.slow_for).await;
    let fault = Fault::begin(&load).await;
    stack.proxy.delay(Duration::ZERO);
    let slow = format!(
        "log store slowed by {} ms per chunk for {} s",
        config.slow_delay.as_millis(),
        config.slow_for.as_secs()
    );
    recoveries.push(fault.until_logged(&slow, &stack, &load).await?);
    tokio::time::sleep(config.settle / 2).await;

    let ledger = load.finish(Duration::from_secs(60)).await;
    let accepted = ledger.accepted.len() as u64;
    wait_until("every accepted vote counted and logged", RECOVERY_LIMIT, || async {
        let (counted, logged) = (stack.counted().await, stack.logged().await);
        (counted >= accepted && logged >= accepted)
            .then_some(())
            .ok_or(format!("{counted} counted, {logged} logged of {accepted}"))
    })
    .await?;
    stack.stop_consumers();
    reckon(config, &stack, ledger, recoveries, started).await
}

/// Compares the accepted votes with Redis, the log and Kafka, then flushes and rebuilds Redis.
async fn reckon(
    config: &Config,
    stack: &Stack,
    ledger: Ledger,
    recoveries: Vec<Recovery>,
    started: Instant,
) -> anyhow::Result<Report> {
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
    let audit = audit::run(&audit_config).await?;
    let expected = ledger.counts();
    let describe = |found: Vec<audit::Difference>| found.iter().map(ToString::to_string).collect::<Vec<_>>();
    let logged_ids = stack.logged_ids().await?;
    let lost = ledger.accepted.keys().filter(|id| !logged_ids.contains(*id)).count() as u64;
    let unknown = logged_ids.iter().filter(|id| !ledger.accepted.contains_key(*id)).count() as u64;
    let kafka = audit.kafka.as_ref().context("the topic was replayed")?;
    let mut report = Report {
        elapsed: Duration::ZERO,
        rate: config.rate,
        recoveries,
        redis_differences: describe(expected.differences(&without_seconds(&audit.redis))),
        log_differences: describe(expected.differences(&without_seconds(&audit.log.counts))),
        kafka_differences: describe(expected.differences(&without_seconds(&kafka.counts))),
        kafka_records: kafka.records,
        kafka_distinct: kafka.counts.total,
        redis: audit.redis.clone(),
        log: audit.log.counts.clone(),
        lost,
        unknown,
        logged_distinct: logged_ids.len() as u64,
        ..Report::default()
    };
    // Redis against the log again, second by second, as the audit command does.
    report.redis_differences.extend(describe(audit.redis_differences.clone()));
    report.redis_differences.extend(describe(
        audit::leaderboard_differences(&stack.redis_connection().await?, &stack.keys(), &audit.redis.bands).await?,
    ));

    stack.flush_redis().await?;
    let mut rebuild_config = audit_config.clone();
    rebuild_config.rebuild = true;
    rebuild_config.replay_kafka = false;
    let rebuilt = audit::run(&rebuild_config).await?;
    report.rebuilt = rebuilt.rebuilt.map_or(0, |r| r.votes);
    report.rebuild_differences = describe(audit.redis.differences(&rebuilt.redis));
    report.ledger = ledger;
    report.elapsed = started.elapsed();
    ensure!(report.ledger.sent > 0, "no vote was sent");
    Ok(report)
}

/// The counts without the per-second split, which only ingest's clock knows.
fn without_seconds(counts: &Counts) -> Counts {
    Counts { seconds: BTreeMap::new(), ..counts.clone() }
}

/// The moment a fault began, and the refusals until then.
struct Fault {
    at: Instant,
    refused: u64,
}

/// How long after a fault the votes are taken whose arrival marks the recovery: a stage has
/// recovered when it has done every vote accepted up to this long after the fault began.
const MARK_AFTER: Duration = Duration::from_secs(1);

impl Fault {
    async fn begin(load: &load::Load) -> Self {
        Fault { at: Instant::now(), refused: load.progress().1 }
    }

    /// Waits until [`MARK_AFTER`] past the fault.
    async fn mark(&self) {
        tokio::time::sleep_until((self.at + MARK_AFTER).into()).await;
    }

    fn recovery(&self, fault: &str, load: &load::Load) -> Recovery {
        Recovery {
            fault: fault.to_owned(),
            recovered_after: self.at.elapsed(),
            refused: load.progress().1 - self.refused,
        }
    }

    /// Waits until Redis counted every vote accepted up to [`MARK_AFTER`] past the fault.
    async fn until_counted(self, fault: &str, stack: &Stack, load: &load::Load) -> anyhow::Result<Recovery> {
        self.mark().await;
        let target = load.progress().0;
        wait_until(fault, RECOVERY_LIMIT, || async {
            let counted = stack.counted().await;
            (counted >= target).then_some(()).ok_or(format!("{counted} of {target} counted"))
        })
        .await?;
        Ok(self.recovery(fault, load))
    }

    /// Waits until MongoDB logged the latest votes accepted up to [`MARK_AFTER`] past the fault (the
    /// final reckoning checks every one).
    async fn until_logged(self, fault: &str, stack: &Stack, load: &load::Load) -> anyhow::Result<Recovery> {
        self.mark().await;
        let ids = &load.recent_ids();
        wait_until(fault, RECOVERY_LIMIT, || async {
            match stack.logged_of(ids, Duration::from_secs(20)).await {
                Ok(logged) if logged == ids.len() => Ok(()),
                Ok(logged) => Err(format!("{logged} of the latest {} logged", ids.len())),
                Err(why) => Err(why),
            }
        })
        .await?;
        Ok(self.recovery(fault, load))
    }

    /// Waits until ingest accepts votes again.
    async fn until_accepting(self, fault: &str, load: &load::Load) -> anyhow::Result<Recovery> {
        let since = load.last_accepted_at();
        wait_until(fault, RECOVERY_LIMIT, || async {
            (load.last_accepted_at() > since && load.last_accepted_at() > Some(self.at))
                .then_some(())
                .ok_or("no vote accepted since".to_owned())
        })
        .await?;
        Ok(self.recovery(fault, load))
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() >= deadline => anyhow::bail!("{what}: not within {within:?} ({last})"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
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
