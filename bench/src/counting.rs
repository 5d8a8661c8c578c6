//! The counting step alone: what Redis holds and spends per vote.
//!
//! Feeds votes straight into the consumer's counting step ([`Tally::apply`], the same script and
//! arguments a consumer sends) against a private Redis with its append-only file on, as in
//! production: votes in the partition their key goes to, counted in batches of about 170 votes per
//! partition (a 500-vote batch spread over three partitions), every partition's batch at once,
//! UUIDv7 ids like the ones ingest gives, acceptance times spread at `--rate` votes per second
//! from now. At
//! every checkpoint it reads Redis's `INFO` and reports the memory per vote (all of it: tallies,
//! positions, re-send memory, voter counts), the keys, evictions, the time per vote and Redis's own
//! CPU per vote, how long the re-send window still is, and at the end the memory of each kind of key.

use std::{
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use bandvote_consumer::tally::{Applied, Origin, PartitionBatch, Rules, Tally};
use bandvote_domain::{Ballot, RedisKeys, Route, VoteEvent, ballot::BallotInput};
use bandvote_testkit::servers::{Kind, PrivateServer};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-bench-counting",
    version,
    about = "Redis memory and CPU per vote of the consumer's counting step, against a private Redis."
)]
pub struct CountingConfig {
    /// Votes to count.
    #[arg(long, default_value_t = 10_000_000)]
    pub votes: u64,
    /// Report every this many votes.
    #[arg(long, default_value_t = 1_000_000)]
    pub every: u64,
    /// Kafka partitions the votes are spread over.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Acceptance times are spread at this many votes per second, from now.
    #[arg(long, default_value_t = 5_272.0)]
    pub rate: f64,
    /// The consumer's re-send window.
    #[arg(long, default_value = "24h", value_parser = bandvote_ops::config::parse_duration)]
    pub resend_window: Duration,
    /// Redis `maxmemory` (for example `64mb`; the policy is `volatile-ttl`). None by default.
    #[arg(long)]
    pub maxmemory: Option<String>,
    /// Redis's append-only file (`yes`, as in production, or `no`, to see its share of the cost).
    #[arg(long, default_value = "yes")]
    pub appendonly: String,
    /// Votes name one of this many voters (0: no voter), under a rule of `--max-votes` per voter, to
    /// see what the voters' counts cost.
    #[arg(long, default_value_t = 0)]
    pub voters: u64,
    /// The per-voter rule with `--voters`.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_votes: u32,
}

/// One checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub votes: u64,
    pub used_memory: u64,
    pub keys: u64,
    pub evicted: u64,
    pub micros_per_vote: f64,
    pub redis_cpu_micros_per_vote: f64,
    pub window: Option<Duration>,
}

/// Votes of one partition batch, about: a 500-vote batch spread over three partitions.
const PER_PARTITION: usize = 170;

/// Runs the measurement and returns the checkpoints and the Markdown report.
pub async fn run(config: &CountingConfig) -> anyhow::Result<(Vec<Checkpoint>, String)> {
    let mut args = vec!["--appendonly".to_owned(), config.appendonly.clone()];
    if let Some(max) = &config.maxmemory {
        args.extend(["--maxmemory".to_owned(), max.clone()]);
    }
    let redis = tokio::task::spawn_blocking(move || {
        PrivateServer::start_with(Kind::Redis, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await?;
    let keys = RedisKeys::new("bandvote");
    let mut tally = Tally::connect(&redis.url(), keys, "votes", config.resend_window).await?;
    if config.voters > 0 {
        tally = tally.with_rules(Rules { max_votes: Some(config.max_votes), ..Rules::default() });
    }
    let mut connection = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    let baseline = info(&mut connection).await?;

    let start_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
    let ballots = ballots()?;
    let mut offsets = vec![0i64; config.partitions as usize];
    let mut checkpoints = Vec::new();
    let mut sent = 0u64;
    let (mut since, mut cpu_since) = (Instant::now(), baseline.cpu);
    let mut last_report = 0u64;
    let mut window = None;
    while sent < config.votes {
        // One round: the next votes, each in the partition its key goes to (as the producer puts
        // them), one batch per partition, counted concurrently.
        let n = ((PER_PARTITION * config.partitions.max(1) as usize) as u64).min(config.votes - sent);
        let mut by_partition: std::collections::BTreeMap<i32, Vec<VoteEvent>> = std::collections::BTreeMap::new();
        for number in sent..sent + n {
            let mut ballot = ballots[(number % ballots.len() as u64) as usize].clone();
            if config.voters > 0 {
                ballot.voter_id = Some(format!("voter-{}", number % config.voters));
            }
            let event = VoteEvent {
                vote_id: bandvote_domain::front::new_vote_id(),
                ballot,
                route: if number.is_multiple_of(2) { Route::Http } else { Route::Grpc },
                received_at_ms: start_ms + (number as f64 * 1000.0 / config.rate) as i64,
            };
            by_partition.entry(event.partition(config.partitions)).or_default().push(event);
        }
        sent += n;
        let mut batches = Vec::with_capacity(by_partition.len());
        for (&partition, votes) in &by_partition {
            let first = offsets[partition as usize];
            offsets[partition as usize] += votes.len() as i64;
            batches.push(PartitionBatch {
                partition,
                origin: if first == 0 { Origin::Start(0) } else { Origin::At(first) },
                votes: votes.iter().enumerate().map(|(i, v)| (first + i as i64, v)).collect(),
                dead_letters: Vec::new(),
            });
        }
        let applied = futures::future::join_all(batches.iter().map(|b| tally.apply(b))).await;
        for applied in applied {
            match applied.context("the counting script failed")? {
                Applied::Counted(counted) => window = counted.window.or(window),
                other => anyhow::bail!("a fresh partition was not counted: {other:?}"),
            }
        }
        if sent - last_report >= config.every || sent == config.votes {
            let now = info(&mut connection).await?;
            let counted = sent - last_report;
            checkpoints.push(Checkpoint {
                votes: sent,
                used_memory: now.used_memory,
                keys: now.keys,
                evicted: now.evicted,
                micros_per_vote: since.elapsed().as_secs_f64() * 1e6 / counted as f64,
                redis_cpu_micros_per_vote: (now.cpu - cpu_since) * 1e6 / counted as f64,
                window,
            });
            eprintln!("counting: {sent} votes, {} MB", now.used_memory / 1_000_000);
            (since, cpu_since, last_report) = (Instant::now(), now.cpu, sent);
        }
    }
    let total: Option<u64> =
        redis::cmd("GET").arg(RedisKeys::new("bandvote").total()).query_async(&mut connection).await?;
    anyhow::ensure!(total == Some(config.votes), "Redis counted {total:?} of {} votes", config.votes);
    // Where the memory is: every key's own size (estimated from 10 000 of its entries), by what it holds.
    let keys: Vec<String> = redis::cmd("KEYS").arg("bandvote:*").query_async(&mut connection).await?;
    let mut by_kind: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
    for key in &keys {
        let bytes: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(10_000).query_async(&mut connection).await?;
        let kind = if key.contains(":resend:") {
            "re-send memory"
        } else if key.ends_with(":voters") {
            "voter counts"
        } else if key.ends_with(":position") {
            "positions"
        } else {
            "tallies"
        };
        let entry = by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += bytes.unwrap_or(0);
    }
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await?;
    let script = stats.lines().find_map(|l| l.strip_prefix("cmdstat_evalsha:")).unwrap_or("none").to_owned();
    let mut markdown = markdown(config, baseline.used_memory, &checkpoints);
    let _ = writeln!(markdown, "\n| keys | count | bytes (MEMORY USAGE) | per vote |\n|---|---:|---:|---:|");
    for (kind, (count, bytes)) in &by_kind {
        let _ = writeln!(
            markdown,
            "| {kind} | {count} | {:.1} MB | {:.1} |",
            *bytes as f64 / 1e6,
            *bytes as f64 / config.votes as f64
        );
    }
    let _ = writeln!(markdown, "\nThe counting script's calls (Redis `INFO commandstats`): {script}.");
    Ok((checkpoints, markdown))
}

fn ballots() -> anyhow::Result<Vec<Ballot>> {
    let mut ballots = Vec::new();
    for n in 0..20 {
        let (name, album, year, rank) = bandvote_testkit::vote(n);
        let input =
            BallotInput::from_json(&serde_json::json!({"name": name, "album": album, "year": year, "rank": rank}))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        ballots.push(Ballot::parse(&input).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok(ballots)
}

struct Info {
    used_memory: u64,
    keys: u64,
    evicted: u64,
    /// Seconds of CPU Redis used, user and system.
    cpu: f64,
}

async fn info(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Info> {
    let text: String =
        redis::cmd("INFO").arg("memory").arg("stats").arg("cpu").arg("keyspace").query_async(redis).await?;
    let field = |name: &str| -> Option<&str> {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let keys = field("db0").and_then(|db| db.split(',').next()?.strip_prefix("keys=")?.parse().ok()).unwrap_or(0);
    Ok(Info {
        used_memory: number("used_memory") as u64,
        keys,
        evicted: number("evicted_keys") as u64,
        cpu: number("used_cpu_user") + number("used_cpu_sys"),
    })
}

fn markdown(config: &CountingConfig, baseline: u64, checkpoints: &[Checkpoint]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Counting step: {} votes over {} partitions, {}, re-send window {}, maxmemory {}, acceptance at {} votes/s.\n",
        config.votes,
        config.partitions,
        if config.voters > 0 {
            format!("{} voters under a rule of at most {} votes", config.voters, config.max_votes)
        } else {
            "no voters".to_owned()
        },
        humantime(config.resend_window),
        config.maxmemory.as_deref().unwrap_or("none"),
        config.rate
    );
    let _ = writeln!(out, "Empty Redis: {:.1} MB.\n", baseline as f64 / 1e6);
    let _ = writeln!(
        out,
        "| votes | Redis used memory | bytes per vote | keys | evicted keys | µs per vote (wall) | Redis CPU µs per vote | re-send window |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in checkpoints {
        let _ = writeln!(
            out,
            "| {} | {:.1} MB | {:.1} | {} | {} | {:.2} | {:.2} | {} |",
            c.votes,
            c.used_memory as f64 / 1e6,
            c.used_memory.saturating_sub(baseline) as f64 / c.votes as f64,
            c.keys,
            c.evicted,
            c.micros_per_vote,
            c.redis_cpu_micros_per_vote,
            c.window.map_or("–".to_owned(), humantime)
        );
    }
    out
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}
