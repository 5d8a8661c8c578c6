//! The consumer loop: read a batch from Kafka, count it in Redis, log it in MongoDB, then mark it
//! done in Kafka.
//!
//! ```text
//! Kafka ──batch──▶ decode ──▶ dead letters (undecodable) ──▶ Redis tally ──queue──▶ Mongo log ──▶ store offsets
//! ```
//!
//! Invariants:
//! * Each partition's counting position lives in Redis and moves in the same atomic step as the
//!   tallies ([`Tally::apply`]), so a record delivered again counts nothing. When Redis says it is
//!   behind what the consumer read (it lost its last writes), the consumer seeks the partition back
//!   to Redis's position and counts the lost records again; Kafka's committed offsets only say
//!   where to start reading, never what was counted.
//! * Offsets are stored (and so committed) only after a record was counted in Redis and logged in
//!   MongoDB, so every record reaches the log at least once; the log is idempotent by vote id,
//!   so every vote is logged exactly once.
//! * The MongoDB log runs behind the tallies through a bounded queue: a slow log store does not hold
//!   back the live counts until the queue (`LOG_QUEUE_BATCHES`) is full.
//! * A failing store is retried with backoff, never skipped; a record that is not a vote event is
//!   sent to the dead-letter topic and never stops the loop.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bandvote_domain::VoteEvent;
use futures::FutureExt as _;
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
    log_store::{KafkaVote, LogStore},
    tally::{Applied, Decision, Origin, PartitionBatch, Tally},
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
    votes: Vec<KafkaVote>,
    next_offsets: BTreeMap<i32, i64>,
}

impl LogBatch {
    /// Appends the batch counted after this one: its votes, and its next offsets, which replace
    /// this one's as storing the two one after the other would.
    fn merge(&mut self, later: LogBatch) {
        self.votes.extend(later.votes);
        self.next_offsets.extend(later.next_offsets);
    }
}

/// Logs rebalances, publishes consumer lag from librdkafka's statistics and the number of assigned
/// partitions, and tells the counting loop that its assignment changed.
#[derive(Default)]
pub struct Context {
    rebalanced: AtomicBool,
}

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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalanced.store(true, Ordering::Release);
        let assigned = consumer.assignment().map_or(0, |tpl| tpl.count());
        metrics::gauge!("bandvote_consumer_assigned_partitions").set(assigned as f64);
        tracing::info!(rebalance = ?describe(rebalance), assigned, "rebalance done");
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
            self.batching.max_votes.max(1),
            self.log.clone(),
            self.consumer.clone(),
            self.topic.clone(),
            writer_stop.clone(),
        ));

        let mut resume = HashMap::new();
        loop {
            let records = tokio::select! {
                () = shutdown.cancelled() => break,
                records = next_batch(&self.consumer, self.batching) => records,
            };
            if records.is_empty() {
                continue;
            }
            // A partition assigned anew is read from its committed offset, not from a seek made
            // before the rebalance.
            if self.consumer.context().rebalanced.swap(false, Ordering::AcqRel) {
                resume.clear();
            }
            let Some(batch) = self.count(records, &mut resume, &shutdown).await else { break };
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

    /// Decodes a batch, sends what is not a vote to the dead-letter topic and counts the rest, one
    /// atomic step per partition. A partition whose records Redis cannot count as they are (it is
    /// behind them, or has no position) is sought back and left out of the batch. Returns `None` if
    /// shutdown came while a store was failing.
    async fn count(
        &self,
        records: Vec<Record>,
        resume: &mut HashMap<i32, Resume>,
        shutdown: &CancellationToken,
    ) -> Option<LogBatch> {
        metrics::histogram!("bandvote_consumer_batch_size").record(records.len() as f64);
        metrics::counter!("bandvote_consumer_records_received_total").increment(records.len() as u64);
        let (partitions, not_votes) = split(records);
        for (record, reason) in &not_votes {
            tracing::warn!(partition = record.partition, offset = record.offset, %reason, "record is not a vote; dead-lettering it");
            retry("dead-letter topic", shutdown, || self.dead_letters.send(&self.topic, record, reason)).await?;
        }
        let mut batches: Vec<PartitionBatch<'_>> = Vec::with_capacity(partitions.len());
        for (&partition, received) in &partitions {
            let origin = self.origin(partition, received.first, resume.remove(&partition)).await;
            batches.push(PartitionBatch {
                partition,
                origin,
                votes: received.votes.iter().map(|v| (v.offset, &v.event)).collect(),
                dead_letters: received.dead_letters.clone(),
            });
        }
        let started = Instant::now();
        let mut applied = futures::future::join_all(
            batches.iter().map(|batch| retry("redis", shutdown, move || self.tally.apply(batch))),
        )
        .await;
        // A partition Redis has never counted, read from its first record (a new deployment, or a
        // Redis that lost everything), is counted from there at once.
        for (batch, applied) in batches.iter_mut().zip(applied.iter_mut()) {
            if *applied == Some(Applied::NoPosition) {
                let first_held = self.first_held(batch.partition).await;
                if first_held > 0 {
                    tracing::warn!(
                        partition = batch.partition,
                        first_held,
                        "Redis holds no counting position for a partition whose older records are no longer in \
                         Kafka: if Redis lost their counts, `bandvote-audit --rebuild` restores them from the log"
                    );
                }
                if batch.origin.offset() == first_held {
                    tracing::info!(partition = batch.partition, "counting the partition from its first record");
                    batch.origin = Origin::Start(first_held);
                    *applied = retry("redis", shutdown, || self.tally.apply(batch)).await;
                }
            }
        }
        metrics::histogram!("bandvote_consumer_redis_write_seconds").record(started.elapsed().as_secs_f64());
        drop(batches);

        let mut batch = LogBatch { votes: Vec::new(), next_offsets: BTreeMap::new() };
        let mut logged = HashSet::new();
        for ((partition, received), applied) in partitions.into_iter().zip(applied) {
            match applied? {
                Applied::Counted(counted) => {
                    metrics::counter!("bandvote_consumer_votes_counted_total").increment(counted.counted);
                    metrics::counter!("bandvote_consumer_votes_duplicate_total").increment(counted.repeated);
                    metrics::counter!("bandvote_consumer_records_redelivered_total").increment(counted.redelivered);
                    metrics::counter!("bandvote_consumer_dead_letters_total").increment(counted.dead_letters);
                    if let Some(window) = counted.window {
                        metrics::gauge!("bandvote_consumer_resend_window_seconds", "partition" => partition.to_string())
                            .set(window.as_secs_f64());
                    }
                    tracing::debug!(
                        partition,
                        counted = counted.counted,
                        repeated = counted.repeated,
                        redelivered = counted.redelivered,
                        next = counted.next,
                        "partition batch counted"
                    );
                    for refused in counted.refused() {
                        metrics::counter!("bandvote_consumer_votes_refused_total", "reason" => refused.code())
                            .increment(1);
                    }
                    batch.next_offsets.insert(partition, received.next);
                    batch.votes.extend(received.into_log(&counted.decisions, &mut logged));
                }
                Applied::Behind { position } => {
                    metrics::counter!("bandvote_consumer_position_seeks_total", "reason" => "redis_behind")
                        .increment(1);
                    tracing::warn!(
                        partition,
                        position,
                        read_from = received.first,
                        "Redis has counted this partition only up to an earlier offset; reading it again from there"
                    );
                    if self.seek(partition, position).await {
                        resume.insert(partition, Resume::Sought(position));
                    }
                }
                Applied::NoPosition => {
                    metrics::counter!("bandvote_consumer_position_seeks_total", "reason" => "no_position").increment(1);
                    let first_held = self.first_held(partition).await;
                    tracing::info!(
                        partition,
                        first_held,
                        "no counting position yet; reading the partition from its first record"
                    );
                    if self.seek(partition, first_held).await {
                        resume.insert(partition, Resume::Start(first_held));
                    }
                }
            }
        }
        Some(batch)
    }

    /// Where the records of `partition` in this batch were read from, given the first one's offset
    /// and the seek made for the partition (if any) before.
    async fn origin(&self, partition: i32, first: i64, resume: Option<Resume>) -> Origin {
        match resume {
            Some(Resume::Start(start)) if first >= start => Origin::Start(first),
            Some(Resume::Sought(sought)) if first == sought => Origin::At(sought),
            Some(Resume::Sought(sought)) if first > sought => {
                // Kafka has nothing between the offset sought and the first record it gave.
                let held = self.first_held(partition).await;
                if held > sought {
                    let lost = first.min(held) - sought;
                    metrics::counter!("bandvote_consumer_uncounted_records_total").increment(lost as u64);
                    tracing::error!(
                        partition,
                        from = sought,
                        to = first.min(held),
                        "records Redis had not counted were deleted from Kafka (retention) before they could be \
                         counted again; `bandvote-audit --rebuild` counts them from the log"
                    );
                } else {
                    tracing::warn!(
                        partition,
                        sought,
                        first,
                        "Kafka has no records between the offset sought and this one"
                    );
                }
                Origin::At(sought)
            }
            // Anything else is a read position reset since the seek (by a rebalance).
            _ => Origin::At(first),
        }
    }

    /// Moves the read position of `partition` to `offset`; false if the partition is no longer
    /// assigned here (its next owner reads it from the committed offset and checks again).
    async fn seek(&self, partition: i32, offset: i64) -> bool {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let sought = tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, rdkafka::Offset::Offset(offset), Duration::from_secs(10))
        })
        .await;
        match sought {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(partition, offset, error = %err, "cannot seek the partition (no longer assigned?)");
                false
            }
            Err(err) => {
                tracing::warn!(partition, offset, error = %err, "the seek did not finish");
                false
            }
        }
    }

    /// The offset of the first record Kafka still holds in `partition` (0 if it cannot say).
    async fn first_held(&self, partition: i32) -> i64 {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let watermarks =
            tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)))
                .await;
        match watermarks {
            Ok(Ok((low, _))) => low,
            other => {
                tracing::warn!(partition, outcome = ?other.map(|r| r.err()), "cannot read the partition's first held offset");
                0
            }
        }
    }
}

/// The records of one partition in a batch, decoded.
struct Received {
    first: i64,
    next: i64,
    votes: Vec<KafkaVote>,
    dead_letters: Vec<i64>,
}

impl Received {
    fn new(first: i64) -> Self {
        Received { first, next: first, votes: Vec::new(), dead_letters: Vec::new() }
    }

    /// The votes to log, each with the counting script's decision (`decisions`, in the order of
    /// `votes`): a vote forgotten by the re-send memory was logged long ago and is left out, and
    /// copies of one vote (by document id, across the batch's partitions: `logged`) are logged once.
    fn into_log(self, decisions: &[Decision], logged: &mut HashSet<String>) -> Vec<KafkaVote> {
        let mut votes = Vec::with_capacity(self.votes.len());
        for (mut vote, decision) in self.votes.into_iter().zip(decisions) {
            vote.refused = match decision {
                Decision::Counted => None,
                Decision::Refused(reason) => Some(*reason),
                Decision::Forgotten => continue,
            };
            if logged.insert(vote.document_id()) {
                votes.push(vote);
            }
        }
        votes
    }
}

/// A batch of records by partition: the votes decoded, the offsets of what is not a vote, and
/// where each partition's records begin and end; and the records that are not votes, with why,
/// for the dead-letter topic.
fn split(records: Vec<Record>) -> (BTreeMap<i32, Received>, Vec<(Record, String)>) {
    let mut partitions: BTreeMap<i32, Received> = BTreeMap::new();
    let mut not_votes = Vec::new();
    for record in records {
        let received = partitions.entry(record.partition).or_insert_with(|| Received::new(record.offset));
        received.next = record.offset + 1;
        match VoteEvent::decode(record.payload.as_deref()) {
            Ok(event) => received.votes.push(KafkaVote {
                event,
                partition: record.partition,
                offset: record.offset,
                refused: None,
            }),
            Err(err) => {
                received.dead_letters.push(record.offset);
                not_votes.push((record, err.to_string()));
            }
        }
    }
    (partitions, not_votes)
}

/// Where a partition is read from after the counting loop moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Sought to Redis's position.
    Sought(i64),
    /// Sought to the first record Kafka holds (Redis had no position).
    Start(i64),
}

/// Waits for the first record, then takes the records Kafka has already brought to this consumer,
/// up to `max_votes` and for at most `max_wait`, never waiting for more: a batch closes as soon as
/// nothing more is there. At a low rate a vote is counted as soon as it is read; at a high rate
/// the fetched records are already there and batches fill; when counting falls behind, records
/// pile up meanwhile and the next batch is larger, so batches grow with the load by themselves.
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
    let deadline = Instant::now() + batching.max_wait;
    while records.len() < batching.max_votes && Instant::now() < deadline {
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => records.push(copy(&message)),
            Some(Err(err)) => {
                tracing::warn!(error = %err, "kafka receive failed");
                break;
            }
            None => break,
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

/// Logs counted batches in order and stores their offsets once they are logged. Batches that
/// queued up while the last write ran are written together, up to `max_votes` at once: small
/// batches at a low rate do not cost one write each when the log store is the slower stage.
async fn log_writer(
    mut pending: mpsc::Receiver<LogBatch>,
    max_votes: usize,
    log: LogStore,
    consumer: Arc<StreamConsumer<Context>>,
    topic: String,
    stop: CancellationToken,
) {
    while let Some(mut batch) = pending.recv().await {
        while batch.votes.len() < max_votes {
            let Ok(next) = pending.try_recv() else { break };
            batch.merge(next);
        }
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

#[cfg(test)]
mod tests {
    use bandvote_domain::{Ballot, Refused, Route, VoteId};
    use serde_json::json;

    use super::*;

    fn event(vote_id: &str, voter: Option<&str>, band: &str) -> VoteEvent {
        let mut body = json!({"name": band, "album": "Conquista", "year": "1985", "rank": "8"});
        if let Some(voter) = voter {
            body["voter_id"] = json!(voter);
        }
        VoteEvent {
            vote_id: VoteId::parse(vote_id).expect("id"),
            ballot: Ballot::from_json(&body).expect("valid"),
            route: Route::Http,
            received_at_ms: 1_764_000_000_000,
        }
    }

    fn record(partition: i32, offset: i64, payload: Option<Vec<u8>>) -> Record {
        Record { partition, offset, key: None, payload }
    }

    fn vote(partition: i32, offset: i64, vote_id: &str) -> Record {
        record(partition, offset, Some(event(vote_id, Some("phone:502"), "Alux Nahual").encode()))
    }

    #[test]
    fn a_batch_splits_into_votes_dead_letters_and_each_partitions_range() {
        let records = vec![
            vote(3, 40, "a"),
            vote(1, 7, "b"),
            record(3, 41, Some(b"{not json".to_vec())),
            record(3, 42, None),
            vote(3, 43, "c"),
            vote(1, 8, "d"),
        ];
        let (partitions, not_votes) = split(records);
        assert_eq!(partitions.keys().copied().collect::<Vec<_>>(), [1, 3]);
        let three = &partitions[&3];
        assert_eq!((three.first, three.next), (40, 44), "the records read, dead letters included");
        assert_eq!(three.dead_letters, [41, 42]);
        let ids: Vec<(i64, &str)> = three.votes.iter().map(|v| (v.offset, v.event.vote_id.as_str())).collect();
        assert_eq!(ids, [(40, "a"), (43, "c")], "votes in offset order, each with its own offset");
        assert!(three.votes.iter().all(|v| v.partition == 3 && v.refused.is_none()));
        let one = &partitions[&1];
        assert_eq!((one.first, one.next, one.dead_letters.len(), one.votes.len()), (7, 9, 0, 2));
        let reasons: Vec<(i64, bool)> = not_votes.iter().map(|(r, why)| (r.offset, !why.is_empty())).collect();
        assert_eq!(reasons, [(41, true), (42, true)], "each record that is not a vote goes out with a reason");
    }

    #[test]
    fn votes_are_logged_with_their_decision_once_and_forgotten_ones_not_again() {
        let records = vec![vote(0, 1, "a"), vote(0, 2, "b"), vote(0, 3, "c"), vote(0, 4, "a"), vote(0, 5, "d")];
        let (mut partitions, _) = split(records);
        let received = partitions.remove(&0).expect("partition 0");
        let decisions = [
            Decision::Counted,
            Decision::Refused(Refused::LimitReached),
            Decision::Forgotten,
            // The same vote again in the same batch: the script gives it the original's decision.
            Decision::Counted,
            Decision::Refused(Refused::VoteIdConflict),
        ];
        let mut logged = HashSet::new();
        let votes = received.into_log(&decisions, &mut logged);
        let shown: Vec<(&str, Option<Refused>)> = votes.iter().map(|v| (v.event.vote_id.as_str(), v.refused)).collect();
        assert_eq!(
            shown,
            [("a", None), ("b", Some(Refused::LimitReached)), ("d", Some(Refused::VoteIdConflict))],
            "a forgotten vote is not logged again; a copy in the same batch is logged once"
        );
        // A conflicting vote is logged beside the original, under its own document id.
        assert!(votes[2].document_id().starts_with("phone:502/d~"), "{}", votes[2].document_id());
        assert_eq!(logged.len(), 3);
    }
}
