//! A private pipeline of processes: Kafka, Redis and the log store's servers, a proxy in front of
//! the log store, the built ingest and consumer binaries, and on demand the Wasm route's front.
//!
//! The chaos and overload runs break it and the benchmarks measure it; both start it here, so what
//! they run is the same stack. Every process is private to the stack and killed when it is dropped.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

use crate::{
    answers_ok,
    cluster::KafkaCluster,
    poll_until,
    servers::{Kind, PrivateServer, SlowProxy, free_port},
    wait_until, wasmtime_serve,
};
use anyhow::Context as _;
use bandvote_domain::RedisKeys;
use bandvote_ops::config::KafkaArgs;
use futures::FutureExt as _;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// The stack's Kafka: one broker, or a cluster of nodes shaped like production.
pub enum Kafka {
    /// One KRaft node (the benchmarks and the overload run).
    Broker(PrivateServer),
    /// Three or more nodes: replication factor 3, `min.insync.replicas=2` (the chaos run).
    Cluster(KafkaCluster),
}

impl Kafka {
    async fn start(nodes: usize) -> anyhow::Result<Self> {
        if nodes <= 1 {
            return Ok(Kafka::Broker(tokio::task::spawn_blocking(|| PrivateServer::start(Kind::Kafka)).await?));
        }
        let cluster = without_panic(KafkaCluster::start(nodes)).await;
        Ok(Kafka::Cluster(cluster.map_err(anyhow::Error::msg).context("the Kafka cluster does not start")?))
    }

    /// The bootstrap servers: every broker, comma separated.
    pub fn url(&self) -> String {
        match self {
            Kafka::Broker(broker) => broker.url(),
            Kafka::Cluster(cluster) => cluster.brokers(),
        }
    }

    /// The replication factor of the stack's topics: the nodes, up to 3.
    pub fn replication_factor(&self) -> i32 {
        match self {
            Kafka::Broker(_) => 1,
            Kafka::Cluster(cluster) => cluster.brokers().split(',').count().min(3) as i32,
        }
    }
}

pub struct Stack {
    pub kafka: Kafka,
    pub redis: PrivateServer,
    pub mongo: PrivateServer,
    /// In front of `mongo`; the consumers log through it.
    pub proxy: SlowProxy,
    pub http_url: String,
    pub grpc_url: String,
    /// Ingest's `/healthz`, `/readyz` and `/metrics`.
    pub ops_url: String,
    bin_dir: PathBuf,
    /// Ingest's command line (the same ports at every start).
    ingest_args: Vec<String>,
    ingest: Option<Child>,
    consumers: Vec<Option<Child>>,
    /// Each consumer replica's metrics port.
    consumer_ports: Vec<u16>,
    /// Where the consumers log: the proxy, or MongoDB itself.
    log_address: String,
    mongo_client: mongodb::Client,
    log: mongodb::Collection<Document>,
    /// Reads the consumer group's committed offsets and the partitions' ends.
    offsets: OffsetReader,
    /// Reads the consumers' metrics.
    http: reqwest::Client,
    logs: PathBuf,
}

/// How the stack is laid out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// More ingest arguments (limits for the overload run, the no-op routes for benchmarks).
    pub ingest_args: Vec<String>,
    /// Consumer replicas started with the stack.
    pub consumers: usize,
    /// Whether the consumers reach MongoDB through the slow proxy (or directly).
    pub log_through_proxy: bool,
    /// Kafka nodes: 1 runs one broker; 3 runs a cluster shaped like production.
    pub kafka_nodes: usize,
    /// Folder of the processes' logs (default: `CHAOS_LOGS`, else `bandvote-chaos` in the
    /// temporary folder).
    pub logs: Option<PathBuf>,
}

/// A Kafka client for offsets that is made again after an error: after a node of the cluster is
/// killed and restarted, librdkafka's metadata cache can go on answering "unknown partition" for
/// minutes.
struct OffsetReader {
    config: rdkafka::ClientConfig,
    client: std::sync::Mutex<Arc<BaseConsumer>>,
}

impl OffsetReader {
    fn new(config: rdkafka::ClientConfig) -> anyhow::Result<Self> {
        let client = config.create().context("a Kafka client for the group's offsets")?;
        Ok(OffsetReader { config, client: std::sync::Mutex::new(Arc::new(client)) })
    }

    /// Runs `read` with the client off the async threads; after an error the next read gets a new
    /// client.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&BaseConsumer) -> Result<T, rdkafka::error::KafkaError> + Send + 'static,
    ) -> Result<T, String> {
        let client = Arc::clone(&self.client.lock().expect("the offsets client"));
        let outcome = tokio::task::spawn_blocking(move || read(&client)).await.map_err(|e| e.to_string())?;
        if outcome.is_err()
            && let Ok(fresh) = self.config.create()
        {
            *self.client.lock().expect("the offsets client") = Arc::new(fresh);
        }
        outcome.map_err(|e| e.to_string())
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout { ingest_args: Vec::new(), consumers: 2, log_through_proxy: true, kafka_nodes: 1, logs: None }
    }
}

impl Stack {
    pub const TOPIC: &'static str = "votes";
    pub const PREFIX: &'static str = "chaos";
    pub const DATABASE: &'static str = "chaos";
    pub const GROUP: &'static str = "chaos-consumers";
    /// Partitions of the votes topic.
    pub const PARTITIONS: i32 = 6;
    /// The consumers' re-send window, in milliseconds.
    pub const RESEND_WINDOW_MS: i64 = 24 * 3_600_000;

    pub async fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, &Layout::default()).await
    }

    /// Starts the servers, ingest and `layout.consumers` consumers. Call [`Stack::shutdown`] when
    /// done.
    pub async fn start_with(bin_dir: &Path, layout: &Layout) -> anyhow::Result<Self> {
        for binary in ["bandvote-ingest", "bandvote-consumer"] {
            anyhow::ensure!(
                bin_dir.join(binary).is_file(),
                "{binary} is not in {}; build it first (dev/chaos does: cargo build --release -p bandvote-ingest -p bandvote-consumer)",
                bin_dir.display()
            );
        }
        let stores =
            tokio::task::spawn_blocking(|| (PrivateServer::start(Kind::Redis), PrivateServer::start(Kind::Mongo)));
        let (kafka, stores) = tokio::join!(Kafka::start(layout.kafka_nodes), stores);
        let (kafka, (redis, mongo)) = (kafka?, stores?);
        let proxy = SlowProxy::start(mongo.address()).await;
        create_topics(&kafka.url(), kafka.replication_factor()).await?;

        let (http_port, grpc_port, ops_port) = (free_port(), free_port(), free_port());
        let logs = layout.logs.clone().unwrap_or_else(|| {
            std::env::var_os("CHAOS_LOGS").map_or_else(|| std::env::temp_dir().join("bandvote-chaos"), PathBuf::from)
        });
        let mut ingest_args = vec![
            format!("--port={http_port}"),
            format!("--grpc-port={grpc_port}"),
            format!("--ops-port={ops_port}"),
            format!("--kafka-brokers={}", kafka.url()),
            format!("--kafka-topic={}", Self::TOPIC),
            format!("--kafka-replication-factor={}", kafka.replication_factor()),
            "--kafka-produce-timeout=2s".into(),
        ];
        ingest_args.extend(layout.ingest_args.iter().cloned());
        let mut offsets_config =
            kafka_args(&kafka.url(), kafka.replication_factor()).client_config("bandvote-chaos-offsets");
        offsets_config.set("group.id", Self::GROUP).set("enable.auto.commit", "false");
        let offsets = OffsetReader::new(offsets_config)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        // Made last: from here on every way out shuts it down (see `shutdown`).
        let mongo_client =
            mongodb::Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=2000", mongo.url())).await?;
        let log = mongo_client.database(Self::DATABASE).collection(bandvote_domain::MongoNames::VOTES);
        let mut stack = Stack {
            kafka,
            redis,
            mongo,
            proxy,
            http_url: format!("http://127.0.0.1:{http_port}"),
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            ops_url: format!("http://127.0.0.1:{ops_port}"),
            bin_dir: bin_dir.to_path_buf(),
            ingest_args,
            ingest: None,
            consumers: Vec::new(),
            consumer_ports: Vec::new(),
            log_address: String::new(),
            mongo_client,
            log,
            offsets,
            http,
            logs,
        };
        stack.log_address = if layout.log_through_proxy { stack.proxy.addr.to_string() } else { stack.mongo.address() };
        let started = async {
            stack.spawn_ingest()?;
            stack.ingest_ready(Duration::from_secs(60)).await?;
            for i in 0..layout.consumers {
                stack.spawn_consumer(i)?;
            }
            anyhow::Ok(())
        }
        .await;
        match started {
            Ok(()) => Ok(stack),
            Err(err) => {
                stack.shutdown().await;
                Err(err)
            }
        }
    }

    /// Starts ingest (again) on its ports.
    pub fn spawn_ingest(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.ingest.is_none(), "ingest is already running");
        let child = Command::new(self.bin_dir.join("bandvote-ingest"))
            .args(&self.ingest_args)
            .env("RUST_LOG", rust_log())
            .stdout(log_file(&self.logs, "ingest")?)
            .stderr(log_file(&self.logs, "ingest")?)
            .spawn()
            .context("bandvote-ingest does not start")?;
        self.ingest = Some(child);
        Ok(())
    }

    /// Waits until ingest says it is ready.
    pub async fn ingest_ready(&self, within: Duration) -> anyhow::Result<()> {
        let ready = format!("{}/readyz", self.ops_url);
        wait_until(within, || answers_ok(&self.http, &ready))
            .await
            .map_err(|last| anyhow::anyhow!("ingest was not ready within {within:?} ({last})"))
    }

    /// Kills ingest with SIGKILL.
    pub fn kill_ingest(&mut self) {
        if let Some(mut child) = self.ingest.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts consumer replica `i` (again).
    pub fn spawn_consumer(&mut self, i: usize) -> anyhow::Result<()> {
        if self.consumer_ports.len() <= i {
            self.consumer_ports.resize_with(i + 1, free_port);
        }
        let child = Command::new(self.bin_dir.join("bandvote-consumer"))
            .args([
                format!("--port={}", self.consumer_ports[i]),
                "--kafka-session-timeout=6s".into(),
                format!("--kafka-brokers={}", self.kafka.url()),
                format!("--kafka-topic={}", Self::TOPIC),
                format!("--kafka-replication-factor={}", self.kafka.replication_factor()),
                format!("--kafka-group={}", Self::GROUP),
                format!("--resend-window={}ms", Self::RESEND_WINDOW_MS),
                format!("--redis-url={}", self.redis.url()),
                format!("--redis-key-prefix={}", Self::PREFIX),
                format!("--mongodb-uri=mongodb://{}/?directConnection=true", self.log_address),
                format!("--mongodb-database={}", Self::DATABASE),
            ])
            .env("RUST_LOG", rust_log())
            .stdout(log_file(&self.logs, &format!("consumer-{i}"))?)
            .stderr(log_file(&self.logs, &format!("consumer-{i}"))?)
            .spawn()
            .context("bandvote-consumer does not start")?;
        if self.consumers.len() <= i {
            self.consumers.resize_with(i + 1, || None);
        }
        self.consumers[i] = Some(child);
        Ok(())
    }

    pub fn kill_consumer(&mut self, i: usize) {
        if let Some(mut child) = self.consumers.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops consumer `i` with SIGTERM, as Kubernetes scales down, and waits for it.
    pub fn terminate_consumer(&mut self, i: usize) {
        if let Some(mut child) = self.consumers.get_mut(i).and_then(Option::take) {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub fn stop_consumers(&mut self) {
        for i in 0..self.consumers.len() {
            self.terminate_consumer(i);
        }
    }

    /// The ingest process's id, to read its memory (0 while it is down).
    pub fn ingest_pid(&self) -> u32 {
        self.ingest.as_ref().map_or(0, Child::id)
    }

    /// The running consumer replicas' process ids.
    pub fn consumer_pids(&self) -> Vec<u32> {
        self.consumers.iter().flatten().map(Child::id).collect()
    }

    /// The running consumer replicas' metrics URLs.
    pub fn consumer_metrics_urls(&self) -> Vec<String> {
        (self.consumers.iter().zip(&self.consumer_ports))
            .filter(|(child, _)| child.is_some())
            .map(|(_, port)| format!("http://127.0.0.1:{port}/metrics"))
            .collect()
    }

    /// The running replicas: their numbers.
    pub fn running_consumers(&self) -> Vec<usize> {
        self.consumers.iter().enumerate().filter(|(_, child)| child.is_some()).map(|(i, _)| i).collect()
    }

    /// Consumer replica `i`'s metrics page, or why it did not answer.
    pub async fn consumer_metrics(&self, i: usize) -> Result<String, String> {
        let port = self.consumer_ports.get(i).ok_or(format!("no consumer replica {i}"))?;
        let answer = self.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await;
        answer.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())
    }

    pub fn keys(&self) -> RedisKeys {
        RedisKeys::new(Self::PREFIX)
    }

    pub async fn redis_connection(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        Ok(redis::Client::open(self.redis.url())?.get_connection_manager().await?)
    }

    /// Votes counted in Redis (0 while Redis does not answer).
    pub async fn counted(&self) -> u64 {
        let read = async {
            let mut redis =
                redis::Client::open(self.redis.url()).ok()?.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("GET").arg(self.keys().total()).query_async::<Option<u64>>(&mut redis).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(2), read).await.ok().flatten().flatten().unwrap_or(0)
    }

    /// How many of `ids` are logged, or why MongoDB did not say within `limit`. One lookup per id;
    /// FerretDB on SQLite reads the whole collection for each (about 3 s per 200 000 documents),
    /// so `ids` should be few.
    pub async fn logged_of(&self, ids: &[String], limit: Duration) -> Result<usize, String> {
        let find = async {
            let mut found = 0;
            for id in ids {
                let one = self.log.find_one(doc! {"_id": id}).projection(doc! {"_id": 1}).await;
                found += usize::from(one.map_err(|e| e.to_string())?.is_some());
            }
            Ok(found)
        };
        tokio::time::timeout(limit, find).await.map_err(|_| format!("no answer within {limit:?}"))?
    }

    /// Every logged vote id, read once (about 40 s per 200 000 documents in FerretDB on SQLite).
    pub async fn logged_ids(&self) -> anyhow::Result<HashSet<String>> {
        use futures::TryStreamExt;
        let mut cursor = self.log.find(doc! {}).projection(doc! {"_id": 1}).batch_size(10_000).await?;
        let mut ids = HashSet::new();
        while let Some(document) = cursor.try_next().await? {
            ids.insert(document.get_str("_id").context("a string _id")?.to_owned());
        }
        Ok(ids)
    }

    /// The end of every partition of the votes topic (the offset the next record gets).
    pub async fn end_offsets(&self) -> Result<BTreeMap<i32, i64>, String> {
        self.offsets
            .read(|client| {
                (0..Self::PARTITIONS)
                    .map(|p| Ok((p, client.fetch_watermarks(Self::TOPIC, p, Duration::from_secs(5))?.1)))
                    .collect()
            })
            .await
    }

    /// The consumer group's committed offset of every partition (0 where it has none). The
    /// consumers commit an offset only after the records below it are counted and logged.
    pub async fn committed_offsets(&self) -> Result<BTreeMap<i32, i64>, String> {
        let partitions: Vec<i32> = (0..Self::PARTITIONS).collect();
        let timeout = Duration::from_secs(5);
        let committed = self
            .offsets
            .read(move |client| bandvote_ops::topics::committed(client, Self::TOPIC, &partitions, timeout))
            .await?;
        Ok((0..Self::PARTITIONS).map(|p| (p, committed.get(&p).copied().unwrap_or(0))).collect())
    }

    /// Records of the votes topic below `ends` that the group has not committed yet.
    pub async fn uncommitted_below(&self, ends: &BTreeMap<i32, i64>) -> Result<i64, String> {
        let committed = self.committed_offsets().await?;
        Ok(ends.iter().map(|(p, end)| (end - committed.get(p).copied().unwrap_or(0)).max(0)).sum())
    }

    /// Waits until Redis counted every accepted vote, none is waiting on an answer, and the consumers
    /// committed (so logged) every record of the topic; or says how far they were after `within`.
    /// `pending` gives the votes accepted and those still waiting on an answer.
    pub async fn settled(&self, within: Duration, pending: impl Fn() -> (u64, usize)) -> Result<(), String> {
        wait_until(within, || async {
            let (accepted, waiting) = pending();
            let counted = self.counted().await;
            let uncommitted = self.uncommitted_below(&self.end_offsets().await?).await?;
            if counted >= accepted && waiting == 0 && uncommitted == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{counted} of {accepted} accepted votes counted, {waiting} votes waiting on an answer, {uncommitted} \
                     records not yet logged and committed"
                ))
            }
        })
        .await
    }

    /// Deletes every tally key, as a Redis that lost its data.
    pub async fn flush_redis(&self) -> anyhow::Result<()> {
        let mut redis = self.redis_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
        Ok(())
    }

    /// Closes the MongoDB client while the runtime still runs (a client dropped as the runtime
    /// shuts down panics in its clean-up task), then stops every process.
    pub async fn shutdown(self) {
        let client = self.mongo_client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown().immediate(true)).await;
        drop(self);
    }
}

/// The Wasm route beside a stack, in one of its two shapes: a native ingest serving only the Wasm
/// route with the checker component embedded ([`Stack::start_wasm_host`]), or, as in its portable
/// pod, a native ingest serving the Wasm route's producer and `wasmtime serve` running the
/// `wasi:http` component in front of it ([`Stack::start_wasm_front`]). Killed when dropped.
pub struct WasmFront {
    /// Where the route answers (its vote paths start with `/wasm`).
    pub url: String,
    /// The process that runs the component last.
    children: Vec<Child>,
}

impl WasmFront {
    /// The route's process ids: the producer, then wasmtime; or the one host.
    pub fn pids(&self) -> Vec<u32> {
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

impl Stack {
    /// Starts the Wasm route on this stack's votes topic as one native ingest that embeds the
    /// checker `component` (`bandvote_checker.wasm`), and waits until it is ready.
    pub async fn start_wasm_host(&self, component: &Path) -> anyhow::Result<WasmFront> {
        anyhow::ensure!(
            component.is_file(),
            "the Wasm checker component {} is not built (dev/build-wasm)",
            component.display()
        );
        let (port, grpc_port, ops_port) = (free_port(), free_port(), free_port());
        let host = Command::new(self.bin_dir.join("bandvote-ingest"))
            .args([
                "--routes=wasm".to_owned(),
                format!("--wasm-component={}", component.display()),
                format!("--port={port}"),
                format!("--grpc-port={grpc_port}"),
                format!("--ops-port={ops_port}"),
                format!("--kafka-brokers={}", self.kafka.url()),
                format!("--kafka-topic={}", Self::TOPIC),
            ])
            .env("RUST_LOG", rust_log())
            .stdout(log_file(&self.logs, "wasm-host")?)
            .stderr(log_file(&self.logs, "wasm-host")?)
            .spawn()
            .context("the Wasm route's host does not start")?;
        let front = WasmFront { url: format!("http://127.0.0.1:{port}"), children: vec![host] };
        let ready = format!("http://127.0.0.1:{ops_port}/readyz");
        let within = Duration::from_secs(60);
        wait_until(within, || answers_ok(&self.http, &ready))
            .await
            .map_err(|last| anyhow::anyhow!("the Wasm host was not ready within {within:?} ({last})"))?;
        Ok(front)
    }

    /// Starts the Wasm route's front on this stack's votes topic with `component` under `wasmtime`,
    /// and waits until it says it is ready. Its processes log beside the stack's.
    pub async fn start_wasm_front(&self, component: &Path, wasmtime: &Path) -> anyhow::Result<WasmFront> {
        anyhow::ensure!(
            component.is_file(),
            "the Wasm component {} is not built (dev/build-wasm)",
            component.display()
        );
        let (producer_port, producer_grpc, producer_ops, port) = (free_port(), free_port(), free_port(), free_port());
        let producer = Command::new(self.bin_dir.join("bandvote-ingest"))
            .args([
                "--routes=wasm".to_owned(),
                format!("--port={producer_port}"),
                format!("--grpc-port={producer_grpc}"),
                format!("--ops-port={producer_ops}"),
                format!("--kafka-brokers={}", self.kafka.url()),
                format!("--kafka-topic={}", Self::TOPIC),
            ])
            .env("RUST_LOG", rust_log())
            .stdout(log_file(&self.logs, "wasm-producer")?)
            .stderr(log_file(&self.logs, "wasm-producer")?)
            .spawn()
            .context("the Wasm route's producer does not start")?;
        let mut front = WasmFront { url: format!("http://127.0.0.1:{port}"), children: vec![producer] };
        let (ingest_url, ingest_ops_url) =
            (format!("http://127.0.0.1:{producer_port}"), format!("http://127.0.0.1:{producer_ops}"));
        let wasmtime_child = wasmtime_serve(wasmtime, component, port, &ingest_url, &ingest_ops_url, &[])
            .stdout(log_file(&self.logs, "wasmtime")?)
            .stderr(log_file(&self.logs, "wasmtime")?)
            .spawn()
            .with_context(|| format!("{} does not start (dev/tools install wasmtime)", wasmtime.display()))?;
        front.children.push(wasmtime_child);
        let ready = format!("{}/readyz", front.url);
        let within = Duration::from_secs(60);
        wait_until(within, || answers_ok(&self.http, &ready))
            .await
            .map_err(|last| anyhow::anyhow!("the Wasm front was not ready within {within:?} ({last})"))?;
        Ok(front)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in self.consumers.iter_mut().chain(std::iter::once(&mut self.ingest)).filter_map(Option::as_mut) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `future`, turning a panic (the test kit's waits panic past their deadline) into an error
/// with the panic's message.
pub async fn without_panic<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future).catch_unwind().await.map_err(panic_message)
}

/// Runs a blocking `work` (a server's restart) on this thread without stalling the runtime's other
/// tasks, turning a panic into an error.
pub fn blocking_without_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    tokio::task::block_in_place(|| std::panic::catch_unwind(AssertUnwindSafe(work))).map_err(panic_message)
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// The log filter of the stack's processes: `CHAOS_RUST_LOG`, else `warn`.
fn rust_log() -> String {
    std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".into())
}

/// A log file for a process of this run, in `dir`.
fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?)
}

fn kafka_args(brokers: &str, replication_factor: i32) -> KafkaArgs {
    KafkaArgs {
        brokers: brokers.to_owned(),
        topic: Stack::TOPIC.to_owned(),
        partitions: Stack::PARTITIONS,
        replication_factor,
        create_topics: true,
        security: Default::default(),
    }
}

/// Creates the topics, retrying every half second while new brokers cannot create them yet.
async fn create_topics(brokers: &str, replication_factor: i32) -> anyhow::Result<()> {
    let kafka = kafka_args(brokers, replication_factor);
    poll_until(Duration::from_millis(500), Duration::from_secs(60), || bandvote_ops::topics::ensure(&kafka))
        .await
        .context("cannot create the topics")
}
