//! Test support for bandvote's integration tests.
//!
//! Tests talk to the real local services that `dev/services start` runs (Kafka, Redis, and the
//! MongoDB-protocol server). Every test isolates itself with unique names: its own topic, consumer
//! group, Redis key prefix and MongoDB database. A test whose service is not running fails with a
//! message that says how to start it; none is skipped.

pub mod cluster;
pub mod secure_kafka;
pub mod servers;
pub mod stack;
pub mod votes;

use std::{
    collections::BTreeMap,
    future::Future,
    net::TcpStream,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime},
};

use bandvote_domain::RedisKeys;
use bandvote_ops::tallies::{self, Counts};
use mongodb::bson::{Document, doc};
use rdkafka::{ClientConfig, Message, consumer::BaseConsumer};

/// The addresses of the local services (overridable with the services' usual variables).
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka_brokers: String,
    pub redis_url: String,
    pub mongodb_uri: String,
}

impl Services {
    /// The local services, checked to be listening.
    pub fn local() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let services = Services {
            kafka_brokers: var("KAFKA_BROKERS", "127.0.0.1:9092"),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            mongodb_uri: var("MONGODB_URI", "mongodb://127.0.0.1:27017"),
        };
        for (name, addr) in [
            ("Kafka", host_port(&services.kafka_brokers)),
            ("Redis", host_port(&services.redis_url)),
            ("MongoDB", host_port(&services.mongodb_uri)),
        ] {
            let reachable = addr.parse().ok().and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
            assert!(
                reachable.is_some(),
                "{name} is not listening on {addr}: start the local services with `dev/services start`"
            );
        }
        services
    }
}

impl Services {
    /// The command line of an ingest on ephemeral ports, publishing to `topic`, plus `extra`.
    pub fn ingest_args(&self, topic: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "bandvote-ingest".to_owned(),
            "--port=0".into(),
            "--grpc-port=0".into(),
            "--ops-port=0".into(),
            format!("--kafka-brokers={}", self.kafka_brokers),
            format!("--kafka-topic={topic}"),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").last().unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = rest.split(['/', ',', '?']).next().unwrap_or(rest);
    host_port.replace("localhost", "127.0.0.1")
}

/// A name no other test (in this run or an earlier one) uses: `<base>-<time>-<pid>-<n>`.
pub fn unique(base: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() % 100_000_000);
    format!("{base}-{millis}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit is one level below the root").to_path_buf()
}

/// Polls `check` every `period` until it passes, or returns its last word after `within`. This is
/// the harness's one polling loop: every wait for a state to show up goes through it.
pub async fn poll_until<T, E, F, Fut>(period: Duration, within: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(period).await,
        }
    }
}

/// [`poll_until`] every 100 ms, with the last word as text.
pub async fn wait_until<T, F, Fut>(within: Duration, check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll_until(Duration::from_millis(100), within, check).await
}

/// [`wait_until`], for tests: panics after `within` with `what` and the last word.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match wait_until(within, check).await {
        Ok(value) => value,
        Err(last) => panic!("timed out after {within:?} waiting for {what}; last: {last}"),
    }
}

/// `Ok` when a GET of `url` answers with a success status (a `/readyz` or `/healthz`), else what
/// it answered instead.
pub async fn answers_ok(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let status = client.get(url).send().await.map_err(|e| e.to_string())?.status();
    if status.is_success() { Ok(()) } else { Err(format!("{url} answered {status}")) }
}

/// Waits until a GET of `url` answers a success status while `child`, the process that serves it,
/// runs: for `within` at most, and no longer than the child lives. Says why not: the child's exit,
/// or the last answer.
pub async fn serving(
    child: &mut std::process::Child,
    client: &reqwest::Client,
    url: &str,
    within: Duration,
) -> Result<(), String> {
    let child = std::sync::Mutex::new(child);
    let outcome = wait_until(within, || async {
        if let Ok(Some(exit)) = child.lock().expect("the child's lock").try_wait() {
            // An `Ok` ends the wait: the child will not start serving any more.
            return Ok(Err(format!("the process exited with {exit}")));
        }
        answers_ok(client, url).await.map(Ok)
    })
    .await;
    outcome.and_then(|served| served)
}

/// The value of `name` in a Prometheus text page, summed over the series whose labels contain
/// `labels` (`""` for all); `None` when no series matches.
pub fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (series, value) = match rest.strip_prefix('{') {
            Some(labelled) => match labelled.split_once('}') {
                Some((series, value)) => (series, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if !series.contains(labels) {
            continue;
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The tallies the consumer wrote under one key prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tallies {
    pub total: u64,
    pub by_band: BTreeMap<String, u64>,
    pub by_album: BTreeMap<String, u64>,
    pub by_route: BTreeMap<String, u64>,
    pub leaderboard: BTreeMap<String, u64>,
    pub per_second_sum: u64,
    pub rank_avg: BTreeMap<String, f64>,
    pub dead_letters: u64,
}

/// Reads every tally under `prefix` from Redis: the product's reader ([`Counts::read`]) and, in
/// the same transaction, what only the tests look at (the leaderboard, the average ranks and the
/// dead letters).
pub async fn read_tallies(redis_url: &str, prefix: &str) -> Tallies {
    let keys = RedisKeys::new(prefix);
    let client = redis::Client::open(redis_url).expect("valid Redis URL");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis answers");
    // One MULTI/EXEC, so that the snapshot is consistent while the consumers are counting.
    let mut pipe = redis::pipe();
    tallies::reads(pipe.atomic(), &keys);
    pipe.hgetall(keys.rank_avg()).zrange_withscores(keys.leaderboard(), 0, -1).get(keys.dead_letters());
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut redis).await.expect("read the tallies");
    let extras = replies.split_off(tallies::READS);
    let counted = Counts::from_replies(replies).expect("the tallies");
    type Extras = (BTreeMap<String, f64>, Vec<(String, f64)>, Option<u64>);
    let (rank_avg, leaderboard, dead_letters): Extras =
        redis::from_redis_value(redis::Value::Array(extras)).expect("the leaderboard, average ranks and dead letters");
    Tallies {
        total: counted.total,
        by_band: counted.bands,
        by_album: counted.albums,
        by_route: counted.routes,
        leaderboard: leaderboard.into_iter().map(|(band, score)| (band, score as u64)).collect(),
        per_second_sum: counted.seconds.values().sum(),
        rank_avg,
        dead_letters: dead_letters.unwrap_or(0),
    }
}

/// The votes refused when they were counted, by reason code (`<prefix>:votes:refused`).
pub async fn read_refused(redis_url: &str, prefix: &str) -> BTreeMap<String, u64> {
    let client = redis::Client::open(redis_url).expect("valid Redis URL");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis answers");
    Counts::read(&mut redis, &RedisKeys::new(prefix)).await.expect("the tallies").refused
}

/// The vote log of one database.
pub struct VoteLog {
    votes: mongodb::Collection<Document>,
}

impl VoteLog {
    pub async fn open(uri: &str, database: &str) -> Self {
        let client = mongodb::Client::with_uri_str(uri).await.expect("MongoDB URI");
        VoteLog { votes: client.database(database).collection(bandvote_domain::MongoNames::VOTES) }
    }

    pub async fn count(&self) -> u64 {
        self.votes.count_documents(doc! {}).await.expect("count the vote log")
    }

    /// Every document, by `_id`; each must be a vote's log document.
    pub async fn all(&self) -> BTreeMap<String, bandvote_domain::LogDocument> {
        use futures::StreamExt;
        let mut cursor = self.votes.clone_with_type().find(doc! {}).await.expect("find the vote log");
        let mut all = BTreeMap::new();
        while let Some(document) = cursor.next().await {
            let document: bandvote_domain::LogDocument = document.expect("a vote's log document");
            let id = document.id.clone();
            assert!(all.insert(id.clone(), document).is_none(), "vote {id} is logged twice");
        }
        all
    }

    pub async fn drop_database(self) {
        let _ = self.votes.client().database(self.votes.namespace().db.as_str()).drop().await;
    }
}

/// A Kafka record's key and payload.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads every record of `topic` from the beginning up to its current end, within 30 s.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<RawRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("broker.address.family", "v4")
        .create()
        .expect("a Kafka reader");
    let mut records = Vec::new();
    bandvote_ops::topics::read_to_end(&consumer, topic, Duration::from_secs(30), |message| {
        records.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
    })
    .unwrap_or_else(|err| panic!("could not read all of topic {topic}: {err}"));
    records
}

/// Deletes every Redis key under `prefix`.
pub async fn clear_redis(redis_url: &str, prefix: &str) {
    let client = redis::Client::open(redis_url).expect("valid Redis URL");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis answers");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut redis).await.expect("KEYS");
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await.expect("DEL");
    }
}

/// A few Guatemalan bands and their albums, for test votes.
pub const BANDS: &[(&str, &[&str])] = &[
    ("Alux Nahual", &["Alux Nahual", "Conquista"]),
    ("Bohemia Suburbana", &["Las Oxidadas Ramas del Mal", "Mil palabras"]),
    ("Malacates Trebol Shop", &["Resistiré", "Vueltas"]),
    ("Viernes Verde", &["Hijos del Maíz"]),
];

/// The `n`-th test vote: `(band, album, year, rank)`, spread over [`BANDS`].
pub fn vote(n: usize) -> (&'static str, &'static str, &'static str, &'static str) {
    let (band, albums) = BANDS[n % BANDS.len()];
    let album = albums[(n / BANDS.len()) % albums.len()];
    let ranks = ["9.5", "86", "7", "10", "3.25"];
    (band, album, "1997", ranks[n % ranks.len()])
}

/// Builds `bandvote-ingest` and `bandvote-consumer` in the running test's profile (the runs that
/// start them as processes need them) and returns their folder: the folder of `bin`, a binary of
/// the same build (`env!("CARGO_BIN_EXE_...")`).
pub fn build_service_binaries(bin: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "bandvote-ingest", "-p", "bandvote-consumer"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cannot build ingest and the consumer");
    bin.parent().expect("a folder").to_path_buf()
}

/// The Wasm route's component, built by `dev/build-wasm` (which `dev/test` runs) into the same
/// target folder as the running test. Panics, saying how to build it, when it is missing.
pub fn wasm_component() -> PathBuf {
    built_component("BANDVOTE_WASM_COMPONENT", "bandvote-ingest-wasm.wasm")
}

/// The Wasm route's checker component, which ingest embeds (`dev/build-wasm --checker`): from
/// `BANDVOTE_WASM_CHECKER`, else where `dev/build-wasm` puts it in the test binary's target
/// directory.
pub fn wasm_checker() -> PathBuf {
    built_component("BANDVOTE_WASM_CHECKER", "bandvote_checker.wasm")
}

fn built_component(variable: &str, file: &str) -> PathBuf {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| {
        // A test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test binary's path");
        let target = exe.ancestors().nth(3).expect("the test binary is in <target>/<profile>/deps");
        target.join("wasm32-wasip2/release").join(file)
    });
    assert!(
        path.is_file(),
        "the Wasm component is not built at {}: run `dev/build-wasm` (dev/test does), with the same \
         CARGO_TARGET_DIR as the tests, or set {variable}",
        path.display()
    );
    path
}

/// The wasmtime CLI: `$WASMTIME`, else the one `dev/tools install wasmtime` caches, else `PATH`'s.
/// Panics, saying how to install it, when there is none.
pub fn wasmtime() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("BANDVOTE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/bandvote")
    });
    let cached = cache.join("bin/wasmtime");
    if cached.is_file() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("wasmtime")).find(|p| p.is_file()));
    on_path.unwrap_or_else(|| {
        panic!(
            "the wasmtime CLI is not installed (looked for $WASMTIME, {} and PATH): run \
             `dev/tools install wasmtime` (dev/test does)",
            cached.display()
        )
    })
}

/// The command line of `wasmtime serve` running `component` on `127.0.0.1:port` in front of a
/// native ingest, as in the Wasm route's pod: the component posts its votes to `ingest_url` and
/// asks `ingest_ops_url` whether it is ready; `env` adds more of the component's settings. The
/// caller chooses where the output goes, then spawns it.
pub fn wasmtime_serve(
    wasmtime: &Path,
    component: &Path,
    port: u16,
    ingest_url: &str,
    ingest_ops_url: &str,
    env: &[(&str, &str)],
) -> std::process::Command {
    let mut command = std::process::Command::new(wasmtime);
    command.args(["serve", "-S", "cli=y", "--addr", &format!("127.0.0.1:{port}")]);
    command.args(["--env", &format!("INGEST_URL={ingest_url}")]);
    command.args(["--env", &format!("INGEST_OPS_URL={ingest_ops_url}")]);
    for (name, value) in env {
        command.args(["--env", &format!("{name}={value}")]);
    }
    command.arg(component);
    command
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn a_metric_is_summed_over_its_matching_series_only() {
        let page = "# TYPE x counter\n\
                    bandvote_consumer_assigned_partitions 2\n\
                    bandvote_consumer_assigned_partitions_other 9\n\
                    bandvote_consumer_position_seeks_total{reason=\"redis_behind\"} 3\n\
                    bandvote_consumer_position_seeks_total{reason=\"no_position\"} 4\n";
        assert_eq!(metric(page, "bandvote_consumer_assigned_partitions", ""), Some(2.0));
        assert_eq!(metric(page, "bandvote_consumer_position_seeks_total", ""), Some(7.0));
        assert_eq!(metric(page, "bandvote_consumer_position_seeks_total", "reason=\"redis_behind\""), Some(3.0));
        assert_eq!(metric(page, "bandvote_consumer_votes_counted_total", ""), None);
    }
}
