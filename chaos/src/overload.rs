//! The overload run: far more requests than ingest can take, from many concurrent clients, to show
//! that it answers with clear refusals (503 `overloaded` / `unavailable`, 429, 413) while its memory
//! stays bounded, and that every vote it did accept is counted.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bandvote_testkit::{
    poll_until,
    stack::{Layout, Stack},
    vote,
};
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-overload",
    version,
    about = "More load than ingest can take: refusals, memory, exact counts."
)]
pub struct OverloadConfig {
    /// Concurrent clients in each phase.
    #[arg(long, default_value_t = 512)]
    pub clients: usize,
    /// Length of each phase.
    #[arg(long, default_value = "20s", value_parser = bandvote_ops::config::parse_duration)]
    pub phase: Duration,
    /// Ingest's MAX_IN_FLIGHT for the run.
    #[arg(long, default_value_t = 128)]
    pub max_in_flight: usize,
    /// Votes in each batch request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Folder of the bandvote-ingest and bandvote-consumer binaries (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write the report (Markdown) here as well as to stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One phase's answers.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    /// Answer (status and error code, or "no answer") → count.
    pub answers: BTreeMap<String, u64>,
    pub votes_accepted: u64,
    /// Votes of requests whose outcome the answer leaves open (503 `unavailable` or `timeout`, no
    /// answer): Kafka may have them, so they may be counted; a retry with their ids is safe.
    pub votes_open: u64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Default)]
pub struct OverloadReport {
    pub clients: usize,
    pub max_in_flight: usize,
    pub idle_rss_mib: f64,
    pub phases: Vec<Phase>,
    pub accepted: u64,
    /// Votes whose outcome was left open (see [`Phase::votes_open`]).
    pub open: u64,
    pub counted: u64,
}

impl OverloadReport {
    /// Every accepted vote counted, nothing counted beyond the votes whose outcome was left open,
    /// and no answer other than an acceptance or a documented refusal.
    pub fn passed(&self) -> bool {
        let known = [
            "200",
            "413 body_too_large",
            "413 batch_too_large",
            "429 rate_limited",
            "503 overloaded",
            "503 unavailable",
            "503 timeout",
        ];
        self.accepted <= self.counted
            && self.counted <= self.accepted + self.open
            && self
                .phases
                .iter()
                .all(|p| p.answers.keys().all(|a| known.contains(&a.as_str()) || a.starts_with("no answer")))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "Overload run {verdict}: {} concurrent clients per phase, MAX_IN_FLIGHT={}; ingest idle RSS {:.1} MiB.\n",
            self.clients, self.max_in_flight, self.idle_rss_mib
        );
        let _ = writeln!(
            out,
            "| phase | s | answers | votes accepted/s | ingest peak RSS (MiB) |\n|---|---:|---|---:|---:|"
        );
        for p in &self.phases {
            let answers: Vec<String> = p.answers.iter().map(|(a, n)| format!("{a}: {n}")).collect();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {:.0} | {:.1} |",
                p.name,
                p.seconds,
                answers.join(", "),
                p.votes_accepted as f64 / p.seconds,
                p.peak_rss_mib
            );
        }
        let _ = writeln!(
            out,
            "\nVotes accepted: {}, and {} in answers that left their outcome open (503 unavailable or timeout, no \
             answer); counted in Redis at the end: {} (at least every accepted vote, at most those too).",
            self.accepted, self.open, self.counted
        );
        out
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// What each client of a phase sends.
#[derive(Clone, Copy)]
enum Shape {
    /// `POST /votes/batch` with this many votes.
    Batch(usize),
    /// `POST /votes`, one vote.
    Single,
    /// A body past MAX_BODY_BYTES.
    TooLarge,
    /// Every client claims the same address (X-Forwarded-For) behind a trusted proxy.
    OneClient,
}

pub async fn run(config: &OverloadConfig) -> anyhow::Result<OverloadReport> {
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the binary has a folder")?.to_path_buf(),
    };
    let ingest_args = [
        format!("--max-in-flight={}", config.max_in_flight),
        "--rate-limit-per-client=200".into(),
        "--rate-limit-burst=200".into(),
        // The load names each client in X-Forwarded-For, as one proxy in front of ingest would.
        "--trusted-proxies=1".into(),
    ];
    let layout = Layout { ingest_args: ingest_args.into(), ..Layout::default() };
    let stack = Stack::start_with(&bin_dir, &layout).await?;
    let pid = stack.ingest_pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut report = OverloadReport {
        clients: config.clients,
        max_in_flight: config.max_in_flight,
        idle_rss_mib: rss_mib(pid),
        ..OverloadReport::default()
    };
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(config.clients).build()?;
    let phases = [
        (format!("batches of {} votes", config.batch), Shape::Batch(config.batch), config.clients),
        ("single votes".to_owned(), Shape::Single, config.clients),
        ("bodies of 1 MiB (limit 256 KiB)".to_owned(), Shape::TooLarge, config.clients.min(32)),
        ("one client past its rate (200/s)".to_owned(), Shape::OneClient, config.clients.min(64)),
    ];
    for (name, shape, clients) in phases {
        let phase = run_phase(&stack, &http, pid, name, shape, clients, config.phase).await;
        report.accepted += phase.votes_accepted;
        report.open += phase.votes_open;
        report.phases.push(phase);
    }
    let accepted = report.accepted;
    // The count is read again below whether or not it got there, so the wait's outcome is not needed.
    let _ = poll_until(Duration::from_millis(200), Duration::from_secs(180), || async {
        if stack.counted().await >= accepted { Ok(()) } else { Err(()) }
    })
    .await;
    report.counted = stack.counted().await;
    stack.shutdown().await;
    Ok(report)
}

async fn run_phase(
    stack: &Stack,
    http: &reqwest::Client,
    pid: u32,
    name: String,
    shape: Shape,
    clients: usize,
    length: Duration,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let accepted = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (stop, answers, accepted, open, http) =
            (stop.clone(), answers.clone(), accepted.clone(), open.clone(), http.clone());
        let base = stack.http_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = client * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let (path, body, votes) = request(shape, n);
                n += votes.max(1);
                // Each client its own address (ingest trusts X-Forwarded-For here), but one for all in
                // the rate-limit phase.
                let address = match shape {
                    Shape::OneClient => "203.0.113.50".to_owned(),
                    _ => format!("10.{}.{}.{}", client >> 16 & 255, client >> 8 & 255, client & 255),
                };
                let request = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", address);
                let answer = match request.body(body).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let reply: Value = response.json().await.unwrap_or(Value::Null);
                        let code = reply["error"]["code"].as_str();
                        if status == 200 {
                            accepted.fetch_add(votes as u64, Ordering::Relaxed);
                            "200".to_owned()
                        } else {
                            if status == 503 && matches!(code, Some("unavailable" | "timeout")) {
                                // A batch partly published names the votes Kafka acknowledged.
                                let acknowledged = reply["error"]["accepted"].as_array().map_or(0, Vec::len);
                                accepted.fetch_add(acknowledged as u64, Ordering::Relaxed);
                                open.fetch_add(votes.saturating_sub(acknowledged) as u64, Ordering::Relaxed);
                            }
                            format!("{status} {}", code.unwrap_or("(no JSON error)"))
                        }
                    }
                    Err(err) if err.is_timeout() => {
                        open.fetch_add(votes as u64, Ordering::Relaxed);
                        "no answer (client timeout)".to_owned()
                    }
                    Err(err) if err.is_connect() => "no answer (cannot connect)".to_owned(),
                    Err(_) => {
                        open.fetch_add(votes as u64, Ordering::Relaxed);
                        "no answer (connection closed)".to_owned()
                    }
                };
                *answers.lock().expect("answers").entry(answer).or_default() += 1;
            }
        }));
    }
    let mut peak: f64 = 0.0;
    while started.elapsed() < length {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let answers = answers.lock().expect("answers").clone();
    Phase {
        name,
        seconds: started.elapsed().as_secs_f64(),
        answers,
        votes_accepted: accepted.load(Ordering::Relaxed),
        votes_open: open.load(Ordering::Relaxed),
        peak_rss_mib: peak.max(rss_mib(pid)),
    }
}

/// The path, body and number of votes of one request.
fn request(shape: Shape, n: usize) -> (&'static str, String, usize) {
    let one = |n: usize| {
        let (name, album, year, rank) = vote(n);
        json!({"name": name, "album": album, "year": year, "rank": rank})
    };
    match shape {
        Shape::Batch(size) => ("/votes/batch", Value::Array((n..n + size).map(one).collect()).to_string(), size),
        Shape::Single | Shape::OneClient => ("/votes", one(n).to_string(), 1),
        Shape::TooLarge => {
            let padding = "x".repeat(1 << 20);
            ("/votes", json!({"name": padding, "album": "a", "year": "1990", "rank": "5"}).to_string(), 0)
        }
    }
}
