//! The peers: the same work done by the bare tools, on the same servers in the same run, so that
//! each route's numbers read as a share of what the layer under it can do at that moment.
//!
//! * [`kafka_produce`]: a bare rdkafka producer with ingest's settings; it also writes the backlog
//!   the consumer catches up on (real vote events).
//! * [`kafka_consume`]: a bare rdkafka consumer reading a topic from the start.
//! * [`insert_many`]: bare `insert_many` batches into a collection with the log's indexes.
//! * [`kcat`], [`redis_benchmark`], [`h2load`], [`locust`]: the external tools, run as processes.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use bandvote_consumer::log_store::{self, KafkaVote, LogStore};
use bandvote_domain::{Ballot, MongoNames, Route, VoteEvent, ballot::BallotInput};
use mongodb::bson::DateTime;
use rdkafka::{
    ClientConfig, ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    util::Timeout,
};
use serde::{Deserialize, Serialize};

/// What one peer did: `items` (records, documents, requests) in `seconds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRun {
    pub peer: String,
    pub items: u64,
    pub seconds: f64,
    pub per_s: f64,
    /// How it was run, in a few words.
    pub how: String,
}

impl PeerRun {
    fn new(peer: &str, items: u64, elapsed: Duration, how: String) -> Self {
        let seconds = elapsed.as_secs_f64();
        PeerRun { peer: peer.to_owned(), items, seconds, per_s: items as f64 / seconds.max(1e-9), how }
    }
}

/// Vote event `n` of a run: the id `<run>-<n>`, the test bands, accepted now over HTTP.
pub fn event(run: &str, n: u64) -> VoteEvent {
    let (name, album, year, rank) = bandvote_testkit::vote(n as usize);
    let id = format!("{run}-{n}");
    let ballot = Ballot::parse(&BallotInput::from_proto(name, album, year, rank, &id, "")).expect("a valid vote");
    let vote_id = ballot.vote_id.clone().expect("the vote has its id");
    let received_at_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    VoteEvent { vote_id, ballot, route: Route::Http, received_at_ms: received_at_ms as i64 }
}

/// Counts delivery reports.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Ingest's producer settings (ingest/src/publisher.rs), so that the bare producer does the same
/// work per record.
fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "65536");
    config
}

/// Produces `count` vote events of run `run` to `topic` as fast as the bare client takes them, and
/// waits for every acknowledgement. The events are encoded before the clock starts.
pub async fn kafka_produce(brokers: &str, topic: &str, run: &str, count: u64) -> anyhow::Result<PeerRun> {
    let (brokers, topic, run) = (brokers.to_owned(), topic.to_owned(), run.to_owned());
    tokio::task::spawn_blocking(move || {
        let records: Vec<(String, Vec<u8>)> = (0..count)
            .map(|n| {
                let event = event(&run, n);
                (event.vote_id.as_str().to_owned(), event.encode())
            })
            .collect();
        let producer: ThreadedProducer<Deliveries> =
            producer_config(&brokers).create_with_context(Deliveries::default()).context("a Kafka producer")?;
        // The first record connects and gets the idempotent producer's id; the clock starts after it.
        let Some(((first_key, first_payload), rest)) = records.split_first() else { bail!("no records") };
        producer
            .send(BaseRecord::to(&topic).key(first_key.as_str()).payload(first_payload.as_slice()))
            .map_err(|(error, _)| error)?;
        producer.flush(Timeout::After(Duration::from_secs(30))).context("the first record")?;
        let started = Instant::now();
        for (key, payload) in rest {
            let mut record = BaseRecord::to(&topic).key(key.as_str()).payload(payload.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err((error, _)) => bail!("producing to {topic}: {error}"),
                }
            }
        }
        producer.flush(Timeout::After(Duration::from_secs(60))).context("flushing the producer")?;
        let elapsed = started.elapsed();
        let context = producer.context();
        let (ok, failed) = (context.ok.load(Ordering::Relaxed), context.failed.load(Ordering::Relaxed));
        ensure!(ok == count && failed == 0, "{ok} of {count} records acknowledged, {failed} failed");
        let how = "ingest's producer settings, acks=all, lz4, timed after the first record".into();
        Ok(PeerRun::new("rdkafka producer", count - 1, elapsed, how))
    })
    .await?
}

/// Reads `expected` records of `topic` from the start of every partition, without a group, as
/// fast as the bare client delivers them (timed from the first record).
pub async fn kafka_consume(brokers: &str, topic: &str, expected: u64) -> anyhow::Result<PeerRun> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("broker.address.family", "v4")
            .set("group.id", "bandvote-bench-bare")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .context("a Kafka consumer")?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
        ensure!(partitions > 0, "topic {topic} has no partitions");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut read, mut bytes, mut first) = (0u64, 0u64, None);
        while read < expected {
            ensure!(Instant::now() < deadline, "read {read} of {expected} records within 10 minutes");
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                first.get_or_insert_with(Instant::now);
                bytes += message.payload_len() as u64;
                read += 1;
            }
        }
        let elapsed = first.map_or(Duration::ZERO, |first| first.elapsed());
        let how = format!("one client, all partitions from the start, {:.0} B per record", bytes as f64 / read as f64);
        Ok(PeerRun::new("rdkafka consumer", read, elapsed, how))
    })
    .await?
}

/// Inserts `count` vote-log documents in unordered `insert_many` batches of `batch` into a fresh
/// collection with the vote log's indexes: what the consumer's log writer does, without the rest.
pub async fn insert_many(uri: &str, database: &str, run: &str, count: u64, batch: usize) -> anyhow::Result<PeerRun> {
    let names = MongoNames { database: database.to_owned(), collection: format!("bench_insert_{run}") };
    let store = LogStore::connect(uri, &names).await?;
    store.ensure_indexes().await?;
    let logged_at = DateTime::now();
    let documents: Vec<_> = (0..count)
        .map(|n| {
            let vote =
                KafkaVote { event: event(run, n), partition: (n % 6) as i32, offset: (n / 6) as i64, refused: None };
            log_store::document(&vote, logged_at)
        })
        .collect();
    let started = Instant::now();
    for chunk in documents.chunks(batch.max(1)) {
        store.votes().insert_many(chunk).ordered(false).await?;
    }
    let elapsed = started.elapsed();
    store.votes().drop().await?;
    Ok(PeerRun::new("insert_many", count, elapsed, format!("batches of {batch}, unordered, the log's indexes")))
}

/// Whether `program` can be run (is on the PATH, or is a path to a file).
pub fn installed(program: &str) -> bool {
    Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn require(program: &str, install: &str) -> anyhow::Result<()> {
    ensure!(installed(program), "{program} is not installed ({install})");
    Ok(())
}

/// Runs a command to its end and returns its standard output, or why it failed.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
}

/// `kcat -P` producing `count` vote events (key and payload) to `topic` with ingest's settings,
/// timed around the whole process.
pub async fn kcat(brokers: &str, topic: &str, run: &str, count: u64, dir: &Path) -> anyhow::Result<PeerRun> {
    require("kcat", "apt-get install kcat")?;
    let file = dir.join(format!("kcat-{run}.txt"));
    let mut lines = Vec::with_capacity(count as usize * 200);
    for n in 0..count {
        let event = event(run, n);
        lines.extend_from_slice(event.vote_id.as_str().as_bytes());
        lines.push(b'\t');
        lines.extend_from_slice(&event.encode());
        lines.push(b'\n');
    }
    std::fs::write(&file, lines)?;
    let started = Instant::now();
    let mut command = Command::new("kcat");
    command.args(["-P", "-b", brokers, "-t", topic, "-K", "\t", "-z", "lz4"]);
    command.args(["-X", "acks=all", "-X", "enable.idempotence=true", "-X", "linger.ms=2", "-l"]).arg(&file);
    tokio::task::spawn_blocking(move || output(&mut command)).await??;
    let elapsed = started.elapsed();
    std::fs::remove_file(&file)?;
    Ok(PeerRun::new("kcat -P", count, elapsed, "from a file, acks=all, lz4, process start included".into()))
}

/// `redis-benchmark` pipelined (64 commands per round trip): the commands the consumer's script
/// runs per vote, as raw throughput of the same Redis.
pub async fn redis_benchmark(host: &str, port: u16, requests: u64) -> anyhow::Result<Vec<PeerRun>> {
    require("redis-benchmark", "apt-get install redis-tools")?;
    let mut command = Command::new("redis-benchmark");
    command.args(["-h", host, "-p", &port.to_string(), "-n", &requests.to_string(), "-P", "64", "-c", "8"]);
    command.args(["--csv", "-t", "set,incr,hset"]);
    let text = tokio::task::spawn_blocking(move || output(&mut command)).await??;
    let mut runs = Vec::new();
    for line in text.lines().filter(|line| line.starts_with("\"") && !line.starts_with("\"test\"")) {
        let fields: Vec<_> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let (Some(test), Some(rps)) = (fields.first(), fields.get(1).and_then(|r| r.parse::<f64>().ok())) else {
            continue;
        };
        runs.push(PeerRun {
            peer: format!("redis-benchmark {test}"),
            items: requests,
            seconds: requests as f64 / rps,
            per_s: rps,
            how: "8 connections, pipeline 64".into(),
        });
    }
    ensure!(!runs.is_empty(), "redis-benchmark printed no results: {text}");
    Ok(runs)
}

/// `h2load` over HTTP/1.1, closed loop: `requests` POSTs of `body` to `url` over `connections`
/// connections, as fast as they are answered. The cross-check of the generator's capacity.
pub async fn h2load(
    url: &str,
    body: &[u8],
    requests: u64,
    connections: usize,
    noop: bool,
    dir: &Path,
) -> anyhow::Result<PeerRun> {
    require("h2load", "apt-get install nghttp2-client")?;
    let file = dir.join("h2load-body.json");
    std::fs::write(&file, body)?;
    let mut command = Command::new("h2load");
    command.args(["--h1", "-n", &requests.to_string(), "-c", &connections.to_string(), "-t", "1"]);
    command.args(["-H", "content-type: application/json"]).arg("-d").arg(&file);
    if noop {
        command.args(["-H", &format!("{}: 1", bandvote_domain::front::NOOP_HEADER)]);
    }
    command.arg(url);
    let text = tokio::task::spawn_blocking(move || output(&mut command)).await??;
    // "finished in 5.01s, 19960.12 req/s, 4.05MB/s" and "status codes: 100000 2xx, ..."
    let finished = text.lines().find(|l| l.starts_with("finished in")).context("h2load's summary")?;
    let took = finished.trim_start_matches("finished in ").split(',').next().unwrap_or_default().trim();
    let seconds = match took.strip_suffix("ms") {
        Some(millis) => millis.parse::<f64>().ok().map(|ms| ms / 1000.0),
        None => took.strip_suffix('s').and_then(|secs| secs.parse().ok()),
    }
    .with_context(|| format!("h2load's time in {finished:?}"))?;
    let ok: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .and_then(|codes| codes.split_whitespace().next()?.parse().ok())
        .context("h2load's status codes")?;
    ensure!(ok == requests, "h2load: {ok} of {requests} answers were 2xx: {text}");
    let how = format!("--h1, {connections} connections, closed loop");
    Ok(PeerRun::new("h2load", ok, Duration::from_secs_f64(seconds), how))
}

/// Locust (the original's tool), headless, `users` users of `user_class` with no wait between
/// requests, for `seconds`. Returns its request rate and the CPU share of its process, which is
/// its ceiling when near one core.
pub async fn locust(
    locust: &Path,
    locustfile: &Path,
    host: &str,
    user_class: &str,
    users: usize,
    seconds: u64,
    dir: &Path,
) -> anyhow::Result<(PeerRun, f64)> {
    let prefix = dir.join("locust");
    let mut command = Command::new(locust);
    command.arg("-f").arg(locustfile).args(["--headless", "--host", host, "--only-summary"]);
    command.args(["--users", &users.to_string(), "--spawn-rate", &users.to_string()]);
    command.args(["--run-time", &format!("{seconds}s"), "--csv"]).arg(&prefix).arg(user_class);
    command.env("WAIT_TIME", "0").stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("running {}", locust.display()))?;
    let pid = child.id();
    let mut cpu = Duration::ZERO;
    while child.try_wait()?.is_none() {
        cpu = crate::system::cpu_time(pid).unwrap_or(cpu);
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(started.elapsed() < Duration::from_secs(seconds + 60), "locust did not stop");
    }
    let elapsed = started.elapsed();
    let stats = std::fs::read_to_string(prefix.with_file_name("locust_stats.csv"))?;
    let mut rows = stats.lines();
    let header: Vec<_> = rows.next().context("a header")?.split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("column {name}"));
    let (requests, failures, rate) = (column("Request Count")?, column("Failure Count")?, column("Requests/s")?);
    let total: Vec<_> = rows.find(|r| r.contains("Aggregated")).context("the aggregated row")?.split(',').collect();
    let number = |i: usize| total.get(i).and_then(|v| v.parse::<f64>().ok()).context("a number");
    ensure!(number(failures)? == 0.0, "locust saw {} failures", number(failures)?);
    let run = PeerRun {
        peer: format!("locust {user_class}"),
        items: number(requests)? as u64,
        seconds: number(requests)? / number(rate)?.max(1e-9),
        per_s: number(rate)?,
        how: format!("{users} users, no wait, one process"),
    };
    Ok((run, cpu.as_secs_f64() / elapsed.as_secs_f64()))
}
