//! Read latency of the vote log at scale: the logs API (and the console) while the log grows.
//!
//! Starts a private MongoDB-protocol server (`--store`: secantus-mdb on WiredTiger, as
//! `dev/services` runs, or FerretDB on SQLite), creates the log's indexes as the consumer does and fills
//! the log with the consumer's own writer ([`LogStore::insert`], batches of 500 like a consumer
//! replica, one at a time) up to each checkpoint of `--at`. The seeded votes' acceptance times
//! are spread at `--rate` votes per second and end when the run starts, as if the consumer had
//! been logging at that rate until now. Then it starts a `bandvote-logs-api` on the log (and the
//! console, with `--console`) and at every checkpoint:
//!
//! * a writer keeps logging new votes, accepted now, at `--rate` votes per second (the same
//!   writer, batches of a tenth of a second's votes), as a consumer does during a contest;
//! * `--concurrency` requests are kept in flight for `--duration` or `--requests` requests,
//!   whichever ends first, taking turns over `GET /votes` (latest 20), `GET /votes?band=`, cursor
//!   pages (a latest page, then [`CURSOR_PAGES`] pages down its `next_cursor`), `GET /tallies` and
//!   the console's page;
//! * every answer is checked (status, size, order, filter, no vote on two pages); one that is not
//!   right counts as an error of its kind, as do refusals and timeouts.
//!
//! It reports p50/p99/max of the successful answers and the errors per kind and checkpoint, the
//! seeding's insert rate (the log store's write rate) and the writer's achieved rate. The log grows
//! during a checkpoint's window by the writer's votes, so each checkpoint says the size at both
//! ends. Bounded: each window by `--duration` plus one `--timeout` (no request starts after the
//! window's end, cursor pages included), the seeding by `--deadline`
//! (checkpoints the seeding does not reach in time are not measured, and the report says so).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use bandvote_consumer::log_store::{KafkaVote, LogStore};
use bandvote_domain::{LogTallies, MongoNames, VotePage};
use bandvote_ops::config::parse_duration;
use bandvote_testkit::servers::{Kind, PrivateServer, free_port};
use hdrhistogram::Histogram;

/// Pages read down `next_cursor` after each latest page of the cursor kind.
pub const CURSOR_PAGES: usize = 3;
/// Votes per insert, as a consumer replica writes them.
const SEED_BATCH: usize = 500;
/// The database the API reads.
const DATABASE: &str = "bandvote";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// secantus-mdb on WiredTiger, the local log store (`dev/services`).
    Secantus,
    /// FerretDB 1.24 on SQLite (`dev/bench logs --store ferretdb` installs it).
    Ferretdb,
}

impl Store {
    fn kind(self) -> Kind {
        match self {
            Store::Ferretdb => Kind::Ferretdb,
            Store::Secantus => Kind::Secantus,
        }
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-bench-logs",
    version,
    about = "Read latency of the logs API (and console) at 10k..1M logged votes while votes keep arriving."
)]
pub struct LogsConfig {
    /// The MongoDB-protocol server to start.
    #[arg(long, value_enum, default_value = "secantus")]
    pub store: Store,
    /// Votes to log in all (the last checkpoint).
    #[arg(long, default_value = "1000000", value_parser = parse_count)]
    pub votes: u64,
    /// Checkpoints: measure when the log holds this many votes (`10k`, `1M` work); those above
    /// `--votes` are dropped and `--votes` is always one.
    #[arg(long, value_delimiter = ',', default_value = "10k,100k", value_parser = parse_count)]
    pub at: Vec<u64>,
    /// Votes per second the writer logs during the measurements (and the seeded votes' spread).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Longest measuring window per checkpoint.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long the writer logs alone before each window opens, so that the window reads a log
    /// fed at the writer's rate rather than one the seeding just filled (`0s`: right after it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lead_in: Duration,
    /// Most requests per checkpoint.
    #[arg(long, default_value_t = 4000)]
    pub requests: u64,
    /// Longest wait for one answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Longest run: seeding stops here and the checkpoints not reached are not measured.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Folder with `bandvote-logs-api` (default: this binary's folder).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The console's server (`bandvote-logs-ui`, feature `ssr`): its page is measured too.
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// More arguments for the logs API (for example `--tally-cache=5s`).
    #[arg(long = "api-arg", allow_hyphen_values = true)]
    pub api_args: Vec<String>,
}

/// `10000`, `10k` or `1M`.
pub fn parse_count(text: &str) -> Result<u64, String> {
    let (digits, factor) = match text.trim().strip_suffix(['k', 'K']) {
        Some(digits) => (digits, 1_000),
        None => match text.trim().strip_suffix('M') {
            Some(digits) => (digits, 1_000_000),
            None => (text.trim(), 1),
        },
    };
    let n = digits.replace('_', "").parse::<u64>().map_err(|_| format!("not a count of votes: {text:?}"))?;
    (n > 0).then_some(n * factor).ok_or_else(|| format!("a count must be above 0: {text:?}"))
}

/// The checkpoints in order, without repeats, none above `votes`, and `votes` the last.
pub fn checkpoints(at: &[u64], votes: u64) -> Vec<u64> {
    let mut points: Vec<u64> = at.iter().copied().filter(|&n| n < votes).collect();
    points.push(votes);
    points.sort_unstable();
    points.dedup();
    points
}

/// What a request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Query {
    Latest,
    Band,
    Cursor,
    Tallies,
    Console,
}

impl Query {
    pub fn label(self) -> &'static str {
        match self {
            Query::Latest => "GET /votes (latest 20)",
            Query::Band => "GET /votes?band=",
            Query::Cursor => "cursor pages",
            Query::Tallies => "GET /tallies",
            Query::Console => "console page",
        }
    }
}

/// The answers of one kind of request at one checkpoint.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Successful answers, in microseconds.
    pub histogram: Histogram<u64>,
    /// Errors by what went wrong.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            errors: BTreeMap::new(),
        }
    }
}

impl Latencies {
    fn record(&mut self, elapsed: Duration, answer: Result<(), String>) {
        match answer {
            Ok(()) => self.histogram.saturating_record(elapsed.as_micros() as u64),
            Err(error) => *self.errors.entry(error).or_default() += 1,
        }
    }

    pub fn ok(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` in milliseconds (`None` without a successful answer).
    pub fn millis(&self, quantile: f64) -> Option<f64> {
        (self.ok() > 0).then(|| self.histogram.value_at_quantile(quantile) as f64 / 1000.0)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One checkpoint's measurements.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Votes in the log when the window opened and when it closed.
    pub votes_at_start: u64,
    pub votes_at_end: u64,
    /// The seeding's insert rate up to this checkpoint (since the previous one), when it seeded.
    pub seed_per_s: Option<f64>,
    /// What the writer achieved during the window, votes per second.
    pub writer_per_s: f64,
    pub writer_errors: u64,
    pub window: Duration,
    pub queries: BTreeMap<Query, Latencies>,
    /// The oldest tally answered in the window (its `as_of`), in milliseconds, when the API says.
    pub tally_age_ms: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct LogsReport {
    pub store: Store,
    pub store_version: String,
    pub date: String,
    pub machine: String,
    pub commit: String,
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoints not measured, and why.
    pub not_reached: Vec<String>,
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args`, logging to `log`, and waits until `url` answers 200.
async fn start_process(program: &Path, args: &[String], log: &Path, url: &str) -> anyhow::Result<Process> {
    let file = std::fs::File::create(log)?;
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("{} does not start", program.display()))?;
    let mut process = Process(child);
    let within = Duration::from_secs(60);
    bandvote_testkit::serving(&mut process.0, &reqwest::Client::new(), url, within).await.map_err(|why| {
        anyhow::anyhow!("{} did not answer {url} within {within:?} ({why}); see {}", program.display(), log.display())
    })?;
    Ok(process)
}

/// Makes the vote log's documents: the seeded history and the writer's new votes.
struct Votes {
    /// Acceptance time of the first seeded vote, in milliseconds.
    origin_ms: i64,
    rate: f64,
}

impl Votes {
    /// Seeded vote `n`, accepted at its place in the history.
    fn seeded(&self, n: u64) -> KafkaVote {
        let mut event = crate::peers::event("seed", n);
        event.received_at_ms = self.origin_ms + (n as f64 * 1000.0 / self.rate) as i64;
        KafkaVote { event, partition: (n % 6) as i32, offset: (n / 6) as i64, refused: None }
    }

    /// The writer's vote `n`, accepted now.
    fn live(n: u64) -> KafkaVote {
        KafkaVote {
            event: crate::peers::event("live", n),
            partition: (n % 6) as i32,
            offset: (n / 6) as i64,
            refused: None,
        }
    }
}

/// The run's counts of logged votes, shared with the request checks.
#[derive(Default)]
struct Logged {
    /// Votes whose insert has started (a reader may see them from then on).
    started: AtomicU64,
    /// Votes whose insert has finished.
    done: AtomicU64,
}

/// Logs `rate` votes per second, accepted now, until `stop`; returns the votes it logged and the
/// inserts that failed.
async fn write(
    store: LogStore,
    rate: f64,
    next: Arc<AtomicU64>,
    logged: Arc<Logged>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    let started = Instant::now();
    let (mut written, mut errors) = (0u64, 0u64);
    let batch = ((rate / 10.0).ceil() as u64).max(1);
    while !*stop.borrow() {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due <= written {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {},
                _ = stop.changed() => break,
            }
            continue;
        }
        let n = (due - written).min(batch * 5);
        let first = next.fetch_add(n, Ordering::Relaxed);
        let votes: Vec<KafkaVote> = (first..first + n).map(Votes::live).collect();
        logged.started.fetch_add(n, Ordering::Relaxed);
        match store.insert(&votes).await {
            Ok(_) => logged.done.fetch_add(n, Ordering::Relaxed),
            Err(_) => {
                errors += 1;
                logged.started.fetch_sub(n, Ordering::Relaxed)
            }
        };
        written += n;
    }
    (written, errors)
}

/// The URLs and checks of the requests.
struct Reader {
    http: reqwest::Client,
    api: String,
    console: Option<String>,
    band: String,
    logged: Arc<Logged>,
    /// The oldest `as_of` of a tally answer in the window, as an age in milliseconds (the API
    /// says how old its tallies are since they are computed in the background).
    tally_age_ms: AtomicU64,
}

impl Reader {
    async fn get(&self, url: &str) -> Result<reqwest::Response, String> {
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() { "timeout".to_owned() } else { format!("http error: {}", e.without_url()) }
        })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(format!("http {status} {}", body["error"]["code"].as_str().unwrap_or(""))
                .trim_end()
                .to_owned());
        }
        Ok(response)
    }

    async fn page(&self, query: &str) -> Result<VotePage, String> {
        let url = format!("{}/votes{query}", self.api);
        self.get(&url).await?.json().await.map_err(|e| format!("not a page: {e}"))
    }

    /// One request of `kind`, timed, into `into`; cursor pages are not followed past `deadline`.
    async fn measure(&self, kind: Query, into: &Mutex<BTreeMap<Query, Latencies>>, deadline: Instant) {
        let record = |kind: Query, started: Instant, answer: Result<(), String>| {
            into.lock().expect("latencies").entry(kind).or_default().record(started.elapsed(), answer);
        };
        let started = Instant::now();
        match kind {
            Query::Latest => record(kind, started, self.page("").await.and_then(|p| full(&p))),
            Query::Band => {
                let query = format!("?band={}", form_encode(&self.band));
                let answer = self.page(&query).await.and_then(|page| {
                    full(&page)?;
                    page.votes.iter().all(|v| v.name == self.band).then_some(()).ok_or("a vote of another band".into())
                });
                record(kind, started, answer);
            }
            Query::Cursor => {
                let mut answer = self.page("").await.and_then(|p| full(&p).map(|()| p));
                record(Query::Latest, started, answer.as_ref().map(drop).map_err(Clone::clone));
                for _ in 0..CURSOR_PAGES {
                    let Ok(previous) = answer else { return };
                    if Instant::now() >= deadline {
                        return;
                    }
                    let Some(cursor) = previous.next_cursor.clone() else { return };
                    let started = Instant::now();
                    answer = self.page(&format!("?cursor={cursor}")).await.and_then(|page| {
                        full(&page)?;
                        follows(&previous, &page)?;
                        Ok(page)
                    });
                    record(kind, started, answer.as_ref().map(drop).map_err(Clone::clone));
                }
            }
            Query::Tallies => {
                let url = format!("{}/tallies", self.api);
                let answer = match self.get(&url).await {
                    Ok(response) => response.json::<serde_json::Value>().await.map_err(|e| format!("not JSON: {e}")),
                    Err(error) => Err(error),
                };
                let most = self.logged.started.load(Ordering::Relaxed);
                let answer = answer.and_then(|body| {
                    if let Some(age) = body["as_of"].as_str().and_then(age_millis) {
                        self.tally_age_ms.fetch_max(age, Ordering::Relaxed);
                    }
                    let tallies: LogTallies =
                        serde_json::from_value(body).map_err(|e| format!("wrong answer: not tallies: {e}"))?;
                    ensure_answer(tallies.total <= most, || {
                        format!("a total of {} above the {most} logged", tallies.total)
                    })
                });
                record(kind, started, answer);
            }
            Query::Console => {
                let Some(url) = &self.console else { return };
                let answer = match self.get(url).await {
                    Ok(response) => response.text().await.map_err(|e| format!("http error: {e}")),
                    Err(error) => Err(error),
                };
                record(
                    kind,
                    started,
                    answer.and_then(|page| {
                        (!page.contains("role=\"alert\"")).then_some(()).ok_or("the page shows an error".into())
                    }),
                );
            }
        }
    }
}

/// A page of 20 votes, newest first, with a next cursor.
fn full(page: &VotePage) -> Result<(), String> {
    ensure_answer(page.votes.len() == 20, || format!("{} votes on a page", page.votes.len()))?;
    ensure_answer(page.next_cursor.is_some(), || "no next_cursor".into())?;
    let newest_first = page.votes.windows(2).all(|w| (&w[0].received_at, &w[0].id) > (&w[1].received_at, &w[1].id));
    ensure_answer(newest_first, || "not newest first".into())
}

/// `next` starts strictly below `previous` in the newest-first order (no vote twice, none skipped
/// is not checked: votes may arrive between the two pages, above both).
fn follows(previous: &VotePage, next: &VotePage) -> Result<(), String> {
    let (Some(last), Some(first)) = (previous.votes.last(), next.votes.first()) else { return Ok(()) };
    ensure_answer((&last.received_at, &last.id) > (&first.received_at, &first.id), || {
        "a page overlaps the previous one".into()
    })
}

/// How long ago an RFC 3339 time was, in milliseconds.
fn age_millis(at: &str) -> Option<u64> {
    let at = mongodb::bson::DateTime::parse_rfc3339_str(at).ok()?;
    Some((mongodb::bson::DateTime::now().timestamp_millis() - at.timestamp_millis()).max(0) as u64)
}

fn ensure_answer(ok: bool, problem: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("wrong answer: {}", problem())) }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Keeps `concurrency` requests in flight, taking turns over `kinds`, for `window` or `requests`.
async fn read_window(reader: &Reader, kinds: &[Query], config: &LogsConfig) -> BTreeMap<Query, Latencies> {
    // Every kind has its row, even one never reached (cursor pages without a first page).
    let latencies = Mutex::new(kinds.iter().map(|&kind| (kind, Latencies::default())).collect());
    let next = AtomicU64::new(0);
    let deadline = Instant::now() + config.duration;
    let worker = || async {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= config.requests || Instant::now() >= deadline {
                return;
            }
            reader.measure(kinds[n as usize % kinds.len()], &latencies, deadline).await;
        }
    };
    futures::future::join_all((0..config.concurrency.max(1)).map(|_| worker())).await;
    latencies.into_inner().expect("latencies")
}

/// Runs the benchmark and returns its report.
pub async fn run(config: &LogsConfig) -> anyhow::Result<LogsReport> {
    let run_started = Instant::now();
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the binary has a folder")?.to_path_buf(),
    };
    let logs = std::env::temp_dir().join(bandvote_testkit::unique("bench-logs"));
    std::fs::create_dir_all(&logs)?;
    eprintln!("logs: servers' logs in {}", logs.display());
    let kind = config.store.kind();
    let server = tokio::task::spawn_blocking(move || PrivateServer::start(kind)).await?;
    let names = MongoNames::new(DATABASE);
    let store = LogStore::connect(&server.url(), &names).await?;
    store.ensure_indexes().await.context("the log's indexes")?;
    let store_version = server_version(&store).await;

    let api_port = free_port();
    let mut api_args = vec![
        format!("--port={api_port}"),
        format!("--mongodb-uri={}", server.url()),
        format!("--mongodb-database={DATABASE}"),
    ];
    api_args.extend(config.api_args.iter().cloned());
    let api_url = format!("http://127.0.0.1:{api_port}");
    let _api = start_process(
        &bin_dir.join("bandvote-logs-api"),
        &api_args,
        &logs.join("logs-api.log"),
        &format!("{api_url}/readyz"),
    )
    .await?;
    let (_console, console_url) = match &config.console {
        Some(program) => {
            let port = free_port();
            let args = [format!("--port={port}"), format!("--logs-api-url={api_url}")];
            let url = format!("http://127.0.0.1:{port}");
            (
                Some(start_process(program, &args, &logs.join("logs-ui.log"), &format!("{url}/healthz")).await?),
                Some(format!("{url}/")),
            )
        }
        None => (None, None),
    };
    let mut kinds = vec![Query::Latest, Query::Band, Query::Cursor, Query::Tallies];
    if console_url.is_some() {
        kinds.push(Query::Console);
    }

    let points = checkpoints(&config.at, config.votes);
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
    let history = Votes { origin_ms: now_ms - (config.votes as f64 * 1000.0 / config.rate) as i64, rate: config.rate };
    let logged = Arc::new(Logged::default());
    let live_next = Arc::new(AtomicU64::new(0));
    let reader = Reader {
        http: reqwest::Client::builder().timeout(config.timeout).build()?,
        api: api_url,
        console: console_url,
        band: bandvote_testkit::BANDS[3].0.to_owned(),
        logged: logged.clone(),
        tally_age_ms: AtomicU64::new(0),
    };
    let mut seeded = 0u64;
    let mut report = LogsReport {
        store: config.store,
        store_version,
        date: crate::suite::now_utc(),
        machine: crate::suite::machine(),
        commit: commit(),
        checkpoints: Vec::new(),
        not_reached: Vec::new(),
    };
    for (i, &point) in points.iter().enumerate() {
        // Top the log up to the checkpoint with history (the writer's votes count too).
        let seed_started = Instant::now();
        let seed_from = seeded;
        while logged.done.load(Ordering::Relaxed) < point && run_started.elapsed() < config.deadline {
            let n = (point - logged.done.load(Ordering::Relaxed)).min(SEED_BATCH as u64);
            let votes: Vec<KafkaVote> = (seeded..seeded + n).map(|k| history.seeded(k)).collect();
            logged.started.fetch_add(n, Ordering::Relaxed);
            store.insert(&votes).await.context("seeding the log")?;
            logged.done.fetch_add(n, Ordering::Relaxed);
            seeded += n;
        }
        let seed_per_s =
            (seeded > seed_from).then(|| (seeded - seed_from) as f64 / seed_started.elapsed().as_secs_f64().max(1e-9));
        let votes_at_start = logged.done.load(Ordering::Relaxed);
        if votes_at_start < point {
            report.not_reached.extend(points[i..].iter().map(|p| {
                format!("{p} votes: the seeding reached {votes_at_start} within the {:?} deadline", config.deadline)
            }));
            break;
        }
        eprintln!("logs: {votes_at_start} votes logged; measuring for up to {:?}", config.duration);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writing_started = Instant::now();
        let writer = tokio::spawn(write(store.clone(), config.rate, live_next.clone(), logged.clone(), stopped));
        tokio::time::sleep(config.lead_in).await;
        let votes_at_start = logged.done.load(Ordering::Relaxed);
        reader.tally_age_ms.store(0, Ordering::Relaxed);
        let window_started = Instant::now();
        let queries = read_window(&reader, &kinds, config).await;
        let window = window_started.elapsed();
        let _ = stop.send(true);
        let (written, writer_errors) = writer.await?;
        let writing = writing_started.elapsed();
        report.checkpoints.push(Checkpoint {
            votes_at_start,
            votes_at_end: logged.done.load(Ordering::Relaxed),
            seed_per_s,
            writer_per_s: written as f64 / writing.as_secs_f64().max(1e-9),
            writer_errors,
            window,
            queries,
            tally_age_ms: Some(reader.tally_age_ms.load(Ordering::Relaxed)).filter(|&age| age > 0),
        });
    }
    drop(server);
    Ok(report)
}

/// The server's `buildInfo` version (FerretDB reports the MongoDB version it imitates, and its
/// own in `ferretdbVersion`).
async fn server_version(store: &LogStore) -> String {
    let info = store.votes().client().database("admin").run_command(mongodb::bson::doc! {"buildInfo": 1}).await;
    match info {
        Ok(info) => {
            let version = info.get_str("version").unwrap_or("?");
            match info.get_str("ferretdbVersion") {
                Ok(ferret) => format!("FerretDB {ferret} (reports MongoDB {version})"),
                Err(_) => format!("reports MongoDB {version}"),
            }
        }
        Err(e) => format!("buildInfo failed: {e}"),
    }
}

/// The repository's commit, with `+dirty` when the work tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(bandvote_testkit::repo_root())
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}+dirty") } else { head }
}

impl LogsReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let store = match self.store {
            Store::Ferretdb => "FerretDB on SQLite",
            Store::Secantus => "secantus-mdb on WiredTiger",
        };
        let _ = writeln!(out, "Read latency of the vote log: {store} ({}), {}.\n", self.store_version, self.date);
        let _ = writeln!(out, "Machine: {}. Commit: {}.\n", self.machine, self.commit);
        let _ = writeln!(
            out,
            "| votes in the log | seeding insert rate | writer during the window | window | oldest tally answered |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for c in &self.checkpoints {
            let _ = writeln!(
                out,
                "| {} → {} | {} | {:.0} votes/s{} | {:.1} s | {} |",
                c.votes_at_start,
                c.votes_at_end,
                c.seed_per_s.map_or("–".to_owned(), |r| format!("{r:.0} votes/s")),
                c.writer_per_s,
                if c.writer_errors > 0 { format!(", {} failed inserts", c.writer_errors) } else { String::new() },
                c.window.as_secs_f64(),
                c.tally_age_ms.map_or("–".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
            );
        }
        let _ = writeln!(out, "\n| votes in the log | query | ok | p50 ms | p99 ms | max ms | errors |");
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---|");
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
        for c in &self.checkpoints {
            for (query, l) in &c.queries {
                let errors = if l.errors.is_empty() && l.ok() == 0 {
                    "none sent: no first page to follow".to_owned()
                } else if l.errors.is_empty() {
                    "0".to_owned()
                } else {
                    l.errors.iter().map(|(e, n)| format!("{n} {e}")).collect::<Vec<_>>().join("; ")
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {errors} |",
                    c.votes_at_start,
                    query.label(),
                    l.ok(),
                    ms(l.millis(0.5)),
                    ms(l.millis(0.99)),
                    ms(l.millis(1.0)),
                );
            }
        }
        for line in &self.not_reached {
            let _ = writeln!(out, "\nNot measured: {line}.");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(parse_count("10000"), Ok(10_000));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("1_000"), Ok(1_000));
        assert!(parse_count("0").is_err());
        assert!(parse_count("ten").is_err());
    }

    #[test]
    fn checkpoints_are_ordered_and_end_at_the_votes() {
        assert_eq!(checkpoints(&[100_000, 10_000, 10_000], 1_000_000), [10_000, 100_000, 1_000_000]);
        assert_eq!(checkpoints(&[10_000, 100_000], 50_000), [10_000, 50_000]);
        assert_eq!(checkpoints(&[], 2_000), [2_000]);
    }

    #[test]
    fn percentiles_are_of_the_successful_answers() {
        let mut latencies = Latencies::default();
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms), Ok(()));
        }
        latencies.record(Duration::from_secs(3), Err("http 503 unavailable".into()));
        assert_eq!(latencies.ok(), 100);
        assert_eq!(latencies.error_count(), 1);
        let p50 = latencies.millis(0.5).unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((99.0..=99.1).contains(&latencies.millis(0.99).unwrap()));
        assert!((99.9..=100.1).contains(&latencies.millis(1.0).unwrap()));
        assert_eq!(Latencies::default().millis(0.5), None);
    }

    #[test]
    fn band_names_are_encoded_for_the_query_string() {
        assert_eq!(form_encode("Viernes Verde"), "Viernes%20Verde");
        assert_eq!(form_encode("Maíz&x"), "Ma%C3%ADz%26x");
    }
}
