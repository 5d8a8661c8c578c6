//! The private pipeline the chaos run breaks: servers, proxy, ingest and consumers as processes.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bandvote_domain::RedisKeys;
use bandvote_testkit::servers::{Kind, PrivateServer, SlowProxy, free_port};
use mongodb::bson::{Document, doc};

pub struct Stack {
    pub kafka: PrivateServer,
    pub redis: PrivateServer,
    pub mongo: PrivateServer,
    /// In front of `mongo`; the consumers log through it.
    pub proxy: SlowProxy,
    pub http_url: String,
    pub grpc_url: String,
    /// Ingest's `/healthz`, `/readyz` and `/metrics`.
    pub ops_url: String,
    bin_dir: PathBuf,
    ingest: Child,
    consumers: Vec<Option<Child>>,
    /// Each consumer replica's metrics port.
    consumer_ports: Vec<u16>,
    /// Where the consumers log: the proxy, or MongoDB itself.
    log_address: String,
    log: mongodb::Collection<Document>,
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
    /// Folder of the processes' logs (default: `CHAOS_LOGS`, else `bandvote-chaos` in the
    /// temporary folder).
    pub logs: Option<PathBuf>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { ingest_args: Vec::new(), consumers: 2, log_through_proxy: true, logs: None }
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

    pub async fn start_with(bin_dir: &Path, layout: &Layout) -> anyhow::Result<Self> {
        for binary in ["bandvote-ingest", "bandvote-consumer"] {
            anyhow::ensure!(
                bin_dir.join(binary).is_file(),
                "{binary} is not in {}; build it first (dev/chaos does: cargo build --release -p bandvote-ingest -p bandvote-consumer)",
                bin_dir.display()
            );
        }
        let (kafka, redis, mongo) = tokio::task::spawn_blocking(|| {
            (PrivateServer::start(Kind::Kafka), PrivateServer::start(Kind::Redis), PrivateServer::start(Kind::Mongo))
        })
        .await?;
        let proxy = SlowProxy::start(mongo.address()).await;
        create_topics(&kafka.url()).await?;

        let (http_port, grpc_port, ops_port) = (free_port(), free_port(), free_port());
        let logs = layout.logs.clone().unwrap_or_else(|| {
            std::env::var_os("CHAOS_LOGS").map_or_else(|| std::env::temp_dir().join("bandvote-chaos"), PathBuf::from)
        });
        let ingest = Command::new(bin_dir.join("bandvote-ingest"))
            .args([
                format!("--port={http_port}"),
                format!("--grpc-port={grpc_port}"),
                format!("--ops-port={ops_port}"),
                format!("--kafka-brokers={}", kafka.url()),
                format!("--kafka-topic={}", Self::TOPIC),
                "--kafka-produce-timeout=2s".into(),
            ])
            .args(&layout.ingest_args)
            .env("RUST_LOG", std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(log_file(&logs, "ingest")?)
            .stderr(log_file(&logs, "ingest")?)
            .spawn()
            .context("bandvote-ingest does not start")?;
        let log = mongodb::Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=2000", mongo.url()))
            .await?
            .database(Self::DATABASE)
            .collection(bandvote_domain::MongoNames::VOTES);
        let mut stack = Stack {
            kafka,
            redis,
            mongo,
            proxy,
            http_url: format!("http://127.0.0.1:{http_port}"),
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            ops_url: format!("http://127.0.0.1:{ops_port}"),
            bin_dir: bin_dir.to_path_buf(),
            ingest,
            consumers: Vec::new(),
            consumer_ports: Vec::new(),
            log_address: String::new(),
            log,
            logs,
        };
        stack.log_address = if layout.log_through_proxy { stack.proxy.addr.to_string() } else { stack.mongo.address() };
        let ready = format!("{}/readyz", stack.ops_url);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(Instant::now() < deadline, "ingest was not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..layout.consumers {
            stack.spawn_consumer(i)?;
        }
        Ok(stack)
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
                format!("--kafka-group={}", Self::GROUP),
                format!("--resend-window={}ms", Self::RESEND_WINDOW_MS),
                format!("--redis-url={}", self.redis.url()),
                format!("--redis-key-prefix={}", Self::PREFIX),
                format!("--mongodb-uri=mongodb://{}/?directConnection=true", self.log_address),
                format!("--mongodb-database={}", Self::DATABASE),
            ])
            .env("RUST_LOG", std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".into()))
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

    /// The ingest process's id, to read its memory.
    pub fn ingest_pid(&self) -> u32 {
        self.ingest.id()
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

    /// Votes logged in MongoDB (0 while it does not answer). FerretDB on SQLite counts by reading
    /// every document (about 8 s per 100 000), so this is for the end of a run.
    pub async fn logged(&self) -> u64 {
        let count = self.log.count_documents(doc! {});
        tokio::time::timeout(Duration::from_secs(60), count).await.ok().and_then(Result::ok).unwrap_or(0)
    }

    /// How many of `ids` are logged, or why MongoDB did not say within `limit`. One lookup per id:
    /// FerretDB on SQLite finds by `_id` equality but scans for `$in`.
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

    pub async fn logged_ids(&self) -> anyhow::Result<HashSet<String>> {
        use futures::TryStreamExt;
        let mut cursor = self.log.find(doc! {}).projection(doc! {"_id": 1}).batch_size(10_000).await?;
        let mut ids = HashSet::new();
        while let Some(document) = cursor.try_next().await? {
            let id = document.get_str("_id").context("a string _id")?.to_owned();
            anyhow::ensure!(ids.insert(id.clone()), "vote {id} is logged twice");
        }
        Ok(ids)
    }

    /// Deletes every tally key, as a Redis that lost its data.
    pub async fn flush_redis(&self) -> anyhow::Result<()> {
        let mut redis = self.redis_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in self.consumers.iter_mut().filter_map(Option::as_mut).chain(std::iter::once(&mut self.ingest)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A log file for a process of this run, in `dir`.
fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?)
}

/// Creates the topics, retrying while the new broker cannot create them yet.
async fn create_topics(brokers: &str) -> anyhow::Result<()> {
    let kafka = bandvote_ops::config::KafkaArgs {
        brokers: brokers.to_owned(),
        topic: Stack::TOPIC.to_owned(),
        partitions: Stack::PARTITIONS,
        replication_factor: 1,
        create_topics: true,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bandvote_ops::topics::ensure(&kafka).await {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() > deadline => return Err(err).context("cannot create the topics"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
