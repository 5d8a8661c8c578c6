//! The consumer loop: read a batch from Kafka, count it in Redis, log it in MongoDB, then mark it
//! done in Kafka.
//!
//! ```text
//! Kafka ──batch──▶ decode ──▶ dead letters (undecodable) ──▶ Redis tally ──queue──▶ Mongo log ──▶ store offsets
//! ```
//!
//! Invariants:
//! * Offsets are stored (and so committed) only after a record was counted in Redis and logged in
//!   MongoDB, so every record is processed at least once; both stores are idempotent by vote id,
//!   so every vote is counted and logged exactly once.
//! * The MongoDB log runs behind the tallies through a bounded queue: a slow log store does not hold
//!   back the live counts until the queue (`LOG_QUEUE_BATCHES`) is full.
//! * A failing store is retried with backoff, never skipped; a record that is not a vote event is
//!   sent to the dead-letter topic and never stops the loop.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bandvote_domain::VoteEvent;
use rdkafka::{
    ClientContext, Message, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult},
    types::RDKafkaErrorCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    dead_letter::DeadLetters,
    log_store::{LogStore, LoggedVote},
    tally::Tally,
};

/// One Kafka record, copied out of the consumer's buffers.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A counted batch on its way to the log store, with the offsets to store once it is logged.
struct LogBatch {
    votes: Vec<LoggedVote>,
    next_offsets: BTreeMap<i32, i64>,
}

/// Logs rebalances and publishes consumer lag from librdkafka's statistics.
pub struct Context;

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!("bandvote_consumer_lag_messages", "topic" => topic.topic.clone(), "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(rebalance = ?describe(rebalance), "rebalance starting");
        // Commit what is done before the partitions go, so their next owner redelivers less.
        if let Rebalance::Revoke(_) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "commit before the rebalance failed; more will be redelivered")
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(rebalance = ?describe(rebalance), "rebalance done");
    }
}

fn describe(rebalance: &Rebalance<'_>) -> String {
    let partitions = |tpl: &TopicPartitionList| -> Vec<i32> { tpl.elements().iter().map(|e| e.partition()).collect() };
    match rebalance {
        Rebalance::Assign(tpl) => format!("assign {:?}", partitions(tpl)),
        Rebalance::Revoke(tpl) => format!("revoke {:?}", partitions(tpl)),
        Rebalance::Error(err) => format!("error {err}"),
    }
}

/// Batching and queueing settings.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_votes: usize,
    pub max_wait: Duration,
    pub log_queue_batches: usize,
    pub shutdown_grace: Duration,
}

pub struct Pipeline {
    pub consumer: Arc<StreamConsumer<Context>>,
    pub topic: String,
    pub tally: Tally,
    pub log: LogStore,
    pub dead_letters: DeadLetters,
    pub batching: Batching,
}

impl Pipeline {
    /// Consumes until `shutdown` is cancelled; then lets the log store catch up (within the grace
    /// period) and commits what was done.
    pub async fn run(self, shutdown: CancellationToken) -> KafkaResult<()> {
        self.consumer.subscribe(&[&self.topic])?;
        let (queue, pending) = mpsc::channel(self.batching.log_queue_batches.max(1));
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(log_writer(
            pending,
            self.log.clone(),
            self.consumer.clone(),
            self.topic.clone(),
            writer_stop.clone(),
        ));

        loop {
            let records = tokio::select! {
                () = shutdown.cancelled() => break,
                records = next_batch(&self.consumer, self.batching) => records,
            };
            if records.is_empty() {
                continue;
            }
            let Some(batch) = self.count(records, &shutdown).await else { break };
            if queue.send(batch).await.is_err() {
                tracing::error!("the log writer stopped; stopping");
                break;
            }
        }

        drop(queue);
        tracing::info!("draining the log queue");
        let grace = self.batching.shutdown_grace;
        let mut writer = writer;
        if tokio::time::timeout(grace, &mut writer).await.is_err() {
            tracing::warn!(?grace, "the log store did not catch up in time; the rest will be redelivered");
            writer_stop.cancel();
            let _ = writer.await;
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => tracing::info!("no new offsets to commit"),
            Err(err) => {
                tracing::warn!(error = %err, "final commit failed; the uncommitted records will be redelivered")
            }
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Decodes a batch, sends what is not a vote to the dead-letter topic and counts the rest.
    /// Returns `None` if shutdown came while a store was failing.
    async fn count(&self, records: Vec<Record>, shutdown: &CancellationToken) -> Option<LogBatch> {
        metrics::histogram!("bandvote_consumer_batch_size").record(records.len() as f64);
        let mut next_offsets = BTreeMap::new();
        let mut votes = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for record in records {
            next_offsets.insert(record.partition, record.offset + 1);
            match VoteEvent::decode(record.payload.as_deref()) {
                Ok(event) => votes.push(LoggedVote { event, partition: record.partition, offset: record.offset }),
                Err(err) => {
                    let reason = err.to_string();
                    tracing::warn!(partition = record.partition, offset = record.offset, %reason, "record is not a vote; dead-lettering it");
                    retry("dead-letter topic", shutdown, || self.dead_letters.send(&self.topic, &record, &reason))
                        .await?;
                    dead.push(format!("{}:{}:{}", self.topic, record.partition, record.offset));
                }
            }
        }
        let started = Instant::now();
        let applied = retry("redis", shutdown, || self.tally.apply(votes.iter().map(|v| &v.event), &dead)).await?;
        metrics::histogram!("bandvote_consumer_redis_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("bandvote_consumer_votes_counted_total").increment(applied.counted);
        metrics::counter!("bandvote_consumer_votes_duplicate_total").increment(applied.duplicates);
        metrics::counter!("bandvote_consumer_dead_letters_total").increment(applied.dead_letters);
        tracing::debug!(
            votes = votes.len(),
            counted = applied.counted,
            duplicates = applied.duplicates,
            "batch counted"
        );
        Some(LogBatch { votes, next_offsets })
    }
}

/// Waits for the first record, then takes what arrives within `max_wait`, up to `max_votes`.
async fn next_batch(consumer: &StreamConsumer<Context>, batching: Batching) -> Vec<Record> {
    let mut records = Vec::new();
    let first = match consumer.recv().await {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(error = %err, "kafka receive failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return records;
        }
    };
    records.push(copy(&first));
    drop(first);
    let deadline = tokio::time::Instant::now() + batching.max_wait;
    while records.len() < batching.max_votes {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(copy(&message)),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "kafka receive failed");
                break;
            }
            Err(_) => break,
        }
    }
    records
}

fn copy(message: &impl Message) -> Record {
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

/// Logs counted batches in order and stores their offsets once they are logged.
async fn log_writer(
    mut pending: mpsc::Receiver<LogBatch>,
    log: LogStore,
    consumer: Arc<StreamConsumer<Context>>,
    topic: String,
    stop: CancellationToken,
) {
    while let Some(batch) = pending.recv().await {
        let started = Instant::now();
        let Some(inserted) = retry("mongodb", &stop, || log.insert(&batch.votes)).await else { return };
        metrics::histogram!("bandvote_consumer_mongo_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("bandvote_consumer_votes_logged_total").increment(inserted);
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &batch.next_offsets {
            if let Err(err) = offsets.add_partition_offset(&topic, *partition, rdkafka::Offset::Offset(*next)) {
                tracing::error!(error = %err, partition, "cannot build the offset list");
            }
        }
        // A partition revoked meanwhile cannot be stored; its new owner reprocesses the batch,
        // which the idempotent stores absorb.
        if let Err(err) = consumer.store_offsets(&offsets) {
            tracing::debug!(error = %err, "offsets not stored (partition no longer assigned)");
        }
    }
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 5 s; `None` if `stop` comes first.
async fn retry<T, E, F, Fut>(store: &'static str, stop: &CancellationToken, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => {
                metrics::counter!("bandvote_consumer_store_errors_total", "store" => store).increment(1);
                tracing::warn!(store, error = %err, retry_in = ?backoff, "write failed; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
