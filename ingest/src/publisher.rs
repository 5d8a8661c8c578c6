//! The one Kafka producer of an ingest process, shared by every route.
//!
//! Invariant: a vote is reported as published only after Kafka acknowledged it with `acks=all`.
//! The producer is idempotent, so its own retries never duplicate a record. Every publish is
//! bounded by `message.timeout.ms`: when Kafka is down or slow the caller hears so within that
//! bound, and the producer reconnects by itself when Kafka is back.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bandvote_domain::VoteEvent;
use bandvote_ops::config::KafkaArgs;
use futures::{StreamExt as _, stream::FuturesUnordered};
use rdkafka::{
    ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

/// How long a publish may wait for room in the producer's local queue before it is refused.
const QUEUE_WAIT: Duration = Duration::from_millis(100);
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

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<ClientErrors>,
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
            producer,
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
        // librdkafka checks `message.timeout.ms` about once a second; the deadline keeps the
        // answer within the configured bound itself.
        tokio::select! {
            biased;
            result = self.send(event) => result,
            () = tokio::time::sleep(self.timeout) => Err(PublishError::TimedOut(self.timeout)),
        }
    }

    /// Publishes votes concurrently; the result for each vote is in the order given. The whole
    /// batch shares one deadline (one timer for the batch, not one per vote).
    pub async fn publish_all(&self, events: &[VoteEvent]) -> Vec<Result<(), PublishError>> {
        let mut sends: FuturesUnordered<_> =
            events.iter().enumerate().map(|(i, event)| async move { (i, self.send(event).await) }).collect();
        let mut results: Vec<Option<Result<(), PublishError>>> = events.iter().map(|_| None).collect();
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                next = sends.next() => match next {
                    Some((i, result)) => results[i] = Some(result),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        results.into_iter().map(|result| result.unwrap_or(Err(PublishError::TimedOut(self.timeout)))).collect()
    }

    /// Gives one vote to the producer and waits for Kafka's answer, however long it takes.
    async fn send(&self, event: &VoteEvent) -> Result<(), PublishError> {
        #[cfg(test)]
        if let Some(memory) = &self.memory {
            memory.lock().expect("the published votes").push(event.clone());
            return Ok(());
        }
        let started = Instant::now();
        let payload = event.encode();
        let key = event.key();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let outcome = match self.producer.send(record, Timeout::After(QUEUE_WAIT)).await {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(PublishError::QueueFull),
            Err((err, _)) => Err(PublishError::Unavailable(err)),
        };
        let latency = if outcome.is_ok() { &self.latency_ok } else { &self.latency_error };
        latency.record(started.elapsed().as_secs_f64());
        outcome
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
