//! bandvote consumer: reads accepted votes from Kafka, counts each exactly once in Redis (the live
//! tallies Grafana shows) and logs each exactly once in MongoDB (the vote log).
//!
//! * [`pipeline`]: the batch loop, its offsets and its invariants.
//! * [`tally`]: the Redis counters, one atomic script per batch.
//! * [`log_store`]: the MongoDB vote log, one document per vote.
//! * [`dead_letter`]: where records that are not votes go.
//! * [`audit`]: recounts the log (and the topic) against Redis.
//! * [`rebuild`]: makes Redis equal to the log again after it lost counts.
//! * [`result`]: the contest's certified result, from the log, with a digest anyone can recompute.
//!
//! Any number of replicas share one consumer group; scaling them, killing them or replaying the
//! topic changes no count.

pub mod audit;
pub mod dead_letter;
pub mod log_store;
pub mod pipeline;
pub mod rebuild;
pub mod result;
pub mod tally;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bandvote_domain::{MongoNames, RedisKeys};
use bandvote_ops::{
    config::{ContestArgs, KafkaArgs, MongoArgs, RedisArgs, TelemetryArgs, parse_duration},
    health,
};
use rdkafka::consumer::StreamConsumer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    dead_letter::DeadLetters,
    log_store::LogStore,
    pipeline::{Batching, Context, Pipeline},
    tally::{Rules, Tally},
};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bandvote-consumer", version, about = "Counts votes from Kafka in Redis and logs them in MongoDB.")]
pub struct Config {
    /// Address for `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port for `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "PORT", default_value_t = 8081)]
    pub port: u16,
    /// The consumer group all replicas share.
    #[arg(long = "kafka-group", env = "KAFKA_GROUP", default_value = "bandvote-consumer")]
    pub group: String,
    /// How long the group waits for a silent replica before giving its partitions to others.
    #[arg(long = "kafka-session-timeout", env = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Most votes in one batch.
    #[arg(long, env = "BATCH_MAX_VOTES", default_value_t = 500)]
    pub batch_max_votes: usize,
    /// Longest wait to fill a batch after its first vote arrived.
    #[arg(long, env = "BATCH_MAX_WAIT", default_value = "20ms", value_parser = parse_duration)]
    pub batch_max_wait: Duration,
    /// Batches the MongoDB log may run behind the Redis tallies.
    #[arg(long, env = "LOG_QUEUE_BATCHES", default_value_t = 64)]
    pub log_queue_batches: usize,
    /// How long a vote id is remembered, so that a client re-sending the vote (same `vote_id`) within
    /// this time counts once. Costs Redis memory for every vote of the window (docs/RELIABILITY.md);
    /// redelivered Kafka records count once at any age, whatever this is.
    #[arg(long, env = "RESEND_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub resend_window: Duration,
    /// How long the log store may take to catch up after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "8s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub contest: ContestArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A built consumer: stores connected, listener bound, not yet consuming.
pub struct ConsumerService {
    pipeline: Pipeline,
    listener: TcpListener,
}

impl ConsumerService {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.kafka.validate().map_err(anyhow::Error::msg)?;
        bandvote_ops::telemetry::metrics();
        if let Err(err) = bandvote_ops::topics::ensure(&config.kafka).await {
            tracing::warn!(error = %err, "cannot make sure the topics exist yet");
        }
        let contest = config.contest.load().map_err(anyhow::Error::msg)?;
        let rules = contest.as_ref().map(Rules::of).unwrap_or_default();
        let keys = RedisKeys::new(&config.redis.key_prefix);
        let tally = Tally::connect(&config.redis.url, keys, &config.kafka.topic, config.resend_window)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", config.redis.url))?
            .with_rules(rules);
        let log = LogStore::connect(&config.mongo.uri, &MongoNames::new(&config.mongo.database))
            .await
            .context("MONGODB_URI is not a valid MongoDB connection string")?;
        // Replicas starting together race to create the indexes; the loser sees them on retry.
        let mut attempt = 1;
        while let Err(err) = log.ensure_indexes().await {
            if attempt == 5 {
                return Err(err).context("cannot create the vote log indexes in MongoDB");
            }
            tracing::warn!(error = %err, attempt, "cannot create the vote log indexes yet; retrying");
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            attempt += 1;
        }
        let consumer: StreamConsumer<Context> = config
            .kafka
            .client_config("bandvote-consumer")
            .set("group.id", &config.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (config.session_timeout.as_millis() / 3).max(100).to_string())
            .set("fetch.wait.max.ms", "50")
            .set("statistics.interval.ms", "5000")
            .create_with_context(Context::default())
            .context("cannot create the Kafka consumer")?;
        let pipeline = Pipeline {
            consumer: Arc::new(consumer),
            topic: config.kafka.topic.clone(),
            tally,
            log,
            dead_letters: DeadLetters::new(&config.kafka).context("cannot create the dead-letter producer")?,
            batching: Batching {
                max_votes: config.batch_max_votes.max(1),
                max_wait: config.batch_max_wait,
                log_queue_batches: config.log_queue_batches,
                shutdown_grace: config.shutdown_grace,
            },
        };
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        Ok(ConsumerService { pipeline, listener })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Consumes until `shutdown` is cancelled, then finishes the batch in hand and commits.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ConsumerService { pipeline, listener } = self;
        let (tally, log) = (pipeline.tally.clone(), pipeline.log.clone());
        let ready: health::ReadyCheck = Arc::new(move || {
            let (tally, log) = (tally.clone(), log.clone());
            Box::pin(async move {
                tally.ping().await?;
                log.ping().await
            })
        });
        let stopped = shutdown.clone();
        let ops = axum::serve(listener, health::routes(ready))
            .with_graceful_shutdown(async move { stopped.cancelled().await });
        tracing::info!(addr = %ops.local_addr()?, topic = %pipeline.topic, "consumer started");
        let ops = tokio::spawn(ops.into_future());
        pipeline.run(shutdown.clone()).await.context("the Kafka consumer failed")?;
        shutdown.cancel();
        ops.await??;
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// Builds and runs the consumer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    ConsumerService::build(config).await?.run_until_stopped(shutdown).await
}
