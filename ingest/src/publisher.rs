//! The one Kafka producer of an ingest process, shared by every route.
//!
//! Invariant: a vote is reported as published only after Kafka acknowledged it with `acks=all`.
//! The producer is idempotent, so its own retries never duplicate a record. Every publish is
//! bounded by `message.timeout.ms`: when Kafka is down or slow the caller hears so within that
//! bound, and the producer reconnects by itself when Kafka is back.
//!
//! A publish is a [`Batch`] (one vote is a batch of one): each record carries a [`Ticket`] naming
//! its batch and place, librdkafka's delivery report settles that place on the producer's polling
//! thread, and the caller waits once, for the whole batch. No future, channel or task per vote.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bandvote_domain::VoteEvent;
use bandvote_ops::config::KafkaArgs;
use rdkafka::{
    ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    util::Timeout,
};
use tokio::sync::Notify;

/// How long a publish may wait for room in the producer's local queue before it is refused.
const QUEUE_WAIT: Duration = Duration::from_millis(100);
/// How often a publish that met a full queue tries again, within [`QUEUE_WAIT`].
const QUEUE_RETRY: Duration = Duration::from_millis(5);
/// How long the client's last error explains a failed readiness check.
const ERROR_EXPLAINS: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka did not acknowledge the vote ({0})")]
    Unavailable(KafkaError),
    #[error("Kafka did not acknowledge the vote within {0:?}")]
    TimedOut(Duration),
    #[error("the ingest queue to Kafka is full; try again shortly")]
    QueueFull,
}

/// The producer's context: it logs librdkafka's client-wide errors (as rdkafka's default does)
/// and keeps the last one, so that a failed readiness check says why Kafka does not answer (a
/// refused password, a broker that refuses connections) and not only that it does not.
#[derive(Clone, Default)]
pub struct ClientErrors(Arc<Mutex<Option<(Instant, String)>>>);

impl ClientErrors {
    /// The last error and how long ago it came, if it came within `within`.
    fn recent(&self, within: Duration) -> Option<(Duration, String)> {
        let last = self.0.lock().ok()?;
        let (at, error) = last.as_ref()?;
        (at.elapsed() <= within).then(|| (at.elapsed(), error.clone()))
    }
}

impl ClientContext for ClientErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(%error, reason, "kafka client error");
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Instant::now(), format!("{error}: {reason}")));
        }
    }
}

impl ProducerContext for ClientErrors {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(PublishError::Unavailable(error.clone())),
        };
        ticket.batch.settle(ticket.place, outcome);
    }
}

/// The votes of one publish, settled one by one by their delivery reports.
struct Batch {
    outcomes: Mutex<Vec<Option<Result<(), PublishError>>>>,
    unsettled: AtomicUsize,
    settled: Notify,
    started: Instant,
    latency_ok: metrics::Histogram,
    latency_error: metrics::Histogram,
}

impl Batch {
    fn new(votes: usize, (latency_ok, latency_error): (&metrics::Histogram, &metrics::Histogram)) -> Self {
        Batch {
            outcomes: Mutex::new((0..votes).map(|_| None).collect()),
            unsettled: AtomicUsize::new(votes),
            settled: Notify::new(),
            started: Instant::now(),
            latency_ok: latency_ok.clone(),
            latency_error: latency_error.clone(),
        }
    }

    fn settle(&self, place: usize, outcome: Result<(), PublishError>) {
        let latency = if outcome.is_ok() { &self.latency_ok } else { &self.latency_error };
        latency.record(self.started.elapsed().as_secs_f64());
        if let Ok(mut outcomes) = self.outcomes.lock()
            && let Some(slot) = outcomes.get_mut(place)
            && slot.is_none()
        {
            *slot = Some(outcome);
            if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.settled.notify_one();
            }
        }
    }
}

/// What a record carries to its delivery report: its batch, and its place in it.
pub struct Ticket {
    batch: Arc<Batch>,
    place: usize,
}

#[derive(Clone)]
pub struct Publisher {
    producer: Arc<ThreadedProducer<ClientErrors>>,
    errors: ClientErrors,
    topic: String,
    timeout: Duration,
    /// `bandvote_ingest_produce_latency_seconds` by result, looked up once.
    latency_ok: metrics::Histogram,
    latency_error: metrics::Histogram,
    /// In unit tests, where the votes go instead of Kafka (see [`Publisher::in_memory`]).
    #[cfg(test)]
    memory: Option<Arc<Mutex<Vec<VoteEvent>>>>,
}

impl Publisher {
    pub fn new(kafka: &KafkaArgs, timeout: Duration) -> Result<Self, KafkaError> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let errors = ClientErrors::default();
        let producer = kafka
            .client_config("bandvote-ingest")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            // The local queue is bounded in records and in bytes; when it is full a vote is refused
            // (503) rather than held in memory.
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("reconnect.backoff.max.ms", "1000")
            // Kafka's own key hash, which `VoteEvent::partition` computes too: ingest knows the
            // partition where a voter's counts are kept.
            .set("partitioner", "murmur2_random")
            .create_with_context(errors.clone())?;
        let latency =
            |result: &'static str| metrics::histogram!("bandvote_ingest_produce_latency_seconds", "result" => result);
        Ok(Publisher {
            producer: Arc::new(producer),
            errors,
            topic: kafka.topic.clone(),
            timeout,
            latency_ok: latency("ok"),
            latency_error: latency("error"),
            #[cfg(test)]
            memory: None,
        })
    }

    /// A publisher that acknowledges every vote at once and keeps it in the returned list, for
    /// unit tests of the routes without a broker. Its producer points at a port nothing listens
    /// on, so anything that asks Kafka itself (readiness, partitions) fails.
    #[cfg(test)]
    pub(crate) fn in_memory() -> (Self, Arc<Mutex<Vec<VoteEvent>>>) {
        let kafka = KafkaArgs {
            brokers: "127.0.0.1:9".into(),
            topic: "votes".into(),
            partitions: 1,
            replication_factor: 1,
            create_topics: false,
            security: Default::default(),
        };
        let published = Arc::new(Mutex::new(Vec::new()));
        let mut publisher = Publisher::new(&kafka, Duration::from_millis(100)).expect("a producer");
        publisher.memory = Some(published.clone());
        (publisher, published)
    }

    /// Publishes one vote and waits for Kafka's acknowledgement.
    pub async fn publish(&self, event: &VoteEvent) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(event)).await.pop().unwrap_or(Err(PublishError::TimedOut(self.timeout)))
    }

    /// Publishes votes and waits for Kafka's answer to all of them, within one deadline for the
    /// whole batch; the result for each vote is in the order given. librdkafka checks
    /// `message.timeout.ms` about once a second; the deadline keeps the answer within the
    /// configured bound itself.
    pub async fn publish_all(&self, events: &[VoteEvent]) -> Vec<Result<(), PublishError>> {
        #[cfg(test)]
        if let Some(memory) = &self.memory {
            memory.lock().expect("the published votes").extend(events.iter().cloned());
            return events.iter().map(|_| Ok(())).collect();
        }
        let batch = Arc::new(Batch::new(events.len(), (&self.latency_ok, &self.latency_error)));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let queue_deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        // librdkafka copies each record's payload: one buffer serves the whole batch.
        let mut payload = Vec::with_capacity(256);
        for (place, event) in events.iter().enumerate() {
            payload.clear();
            event.encode_into(&mut payload);
            let key = event.key();
            let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(Ticket { batch: batch.clone(), place }))
                .key(key.as_bytes())
                .payload(&payload);
            // A full local queue is waited on for QUEUE_WAIT at most (from the batch's start),
            // then this vote and the rest are refused.
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < queue_deadline =>
                    {
                        record = back;
                        tokio::time::sleep(QUEUE_RETRY).await;
                    }
                    Err((error, _)) => {
                        let refused = |error: &KafkaError| match error {
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
                            error => PublishError::Unavailable(error.clone()),
                        };
                        // This vote and the ones not given to the producer yet are refused.
                        for rest in place..events.len() {
                            batch.settle(rest, Err(refused(&error)));
                        }
                        return self.wait(&batch, events.len(), deadline).await;
                    }
                }
            }
        }
        self.wait(&batch, events.len(), deadline).await
    }

    /// Waits until each of the `votes` votes of `batch` is settled or `deadline` passes; a vote
    /// still unsettled then has timed out (its delivery report, when it comes, changes nothing).
    async fn wait(&self, batch: &Batch, votes: usize, deadline: tokio::time::Instant) -> Vec<Result<(), PublishError>> {
        // The last vote settled wakes this wait (or leaves it a permit, when it came first).
        while batch.unsettled.load(Ordering::Acquire) > 0 {
            if tokio::time::timeout_at(deadline, batch.settled.notified()).await.is_err() {
                break;
            }
        }
        let mut outcomes = batch.outcomes.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
        outcomes.resize_with(votes, || None);
        outcomes.into_iter().map(|outcome| outcome.unwrap_or(Err(PublishError::TimedOut(self.timeout)))).collect()
    }

    /// Whether Kafka answers a metadata request for the votes topic right now.
    pub async fn check(&self) -> Result<(), String> {
        self.partitions().await.map(drop)
    }

    /// The votes topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many partitions the votes topic has, from Kafka's metadata. The error says what the
    /// request met and, when there is one, the client's last error (why it met it).
    pub async fn partitions(&self) -> Result<i32, String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(2)))
                .map_err(|err| format!("kafka: {err}"))?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
                // For example TopicAuthorizationFailed: this user may not describe the topic.
                Some(t) => match t.error() {
                    Some(error) => {
                        Err(format!("kafka: topic {topic:?} is not available ({:?})", RDKafkaErrorCode::from(error)))
                    }
                    None => Err(format!("kafka: topic {topic:?} is not available")),
                },
                None => Err(format!("kafka: topic {topic:?} is not available")),
            }
        })
        .await
        .map_err(|err| format!("kafka metadata failed: {err}"))?;
        answer.map_err(|failed| match self.errors.recent(ERROR_EXPLAINS) {
            Some((ago, error)) => format!("{failed}; the Kafka client's last error, {}s ago: {error}", ago.as_secs()),
            None => failed,
        })
    }

    /// The bound on one publish, as configured.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits until every queued vote was delivered or failed.
    pub fn flush(&self, within: Duration) {
        if let Err(err) = self.producer.flush(Timeout::After(within)) {
            tracing::warn!(error = %err, "producer flush did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher whose producer points at a port nothing listens on, with a short timeout.
    fn offline() -> Publisher {
        let (mut publisher, _) = Publisher::in_memory();
        publisher.memory = None;
        publisher.timeout = Duration::from_millis(300);
        publisher
    }

    #[tokio::test]
    async fn a_batch_is_answered_in_its_order_once_every_vote_is_settled() {
        let publisher = offline();
        let histograms = (&publisher.latency_ok, &publisher.latency_error);
        let batch = Arc::new(Batch::new(3, histograms));
        let settler = batch.clone();
        // Delivery reports come in any order, on another thread, after the wait began.
        let reports = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            settler.settle(2, Err(PublishError::QueueFull));
            settler.settle(0, Ok(()));
            settler.settle(0, Err(PublishError::QueueFull));
            settler.settle(1, Ok(()));
        });
        let outcomes = publisher.wait(&batch, 3, tokio::time::Instant::now() + Duration::from_secs(10)).await;
        reports.join().expect("the reports");
        let kinds: Vec<Option<&str>> = outcomes
            .iter()
            .map(|o| o.as_ref().err().map(|e| if matches!(e, PublishError::QueueFull) { "full" } else { "other" }))
            .collect();
        assert_eq!(kinds, [None, None, Some("full")], "each vote's own report, the first one only");
    }

    #[tokio::test]
    async fn what_is_unsettled_at_the_deadline_has_timed_out_and_a_late_report_changes_nothing() {
        let publisher = offline();
        let batch = Batch::new(2, (&publisher.latency_ok, &publisher.latency_error));
        batch.settle(1, Ok(()));
        let outcomes = publisher.wait(&batch, 2, tokio::time::Instant::now() + Duration::from_millis(50)).await;
        assert!(matches!(outcomes[0], Err(PublishError::TimedOut(_))), "{outcomes:?}");
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
        batch.settle(0, Ok(()));
        assert_eq!(batch.unsettled.load(Ordering::Acquire), 1, "a report after the answer settles nothing");
    }

    #[tokio::test]
    async fn without_a_broker_every_vote_of_a_batch_fails_within_the_timeout() {
        let publisher = offline();
        let events: Vec<VoteEvent> = (0..3)
            .map(|i| {
                let ballot = bandvote_domain::Ballot::from_json(&serde_json::json!({
                    "name": format!("Band {i}"), "album": "A", "year": "1997", "rank": "1", "vote_id": format!("v{i}")
                }))
                .expect("a ballot");
                VoteEvent {
                    vote_id: ballot.vote_id.clone().expect("an id"),
                    ballot,
                    route: bandvote_domain::Route::Http,
                    received_at_ms: 0,
                }
            })
            .collect();
        let outcomes = publisher.publish_all(&events).await;
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(Result::is_err), "{outcomes:?}");
    }
}
