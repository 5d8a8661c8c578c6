//! Creating the vote topics when they are missing, and the two ways their content is read from
//! outside a consumer group's loop: every record a topic holds ([`read_to_end`], for the audit's
//! replay and the tests) and a group's committed offsets ([`committed`], for the rebuild and the
//! tests).

use std::{collections::BTreeMap, fmt, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::BorrowedMessage,
    types::RDKafkaErrorCode,
};

use crate::config::KafkaArgs;

/// The votes topic's settings, the same as `k8s/base/kafka-topics.yaml` (docs/RELIABILITY.md says
/// why): a week of retention by time only, deleted in segments of an hour, on the brokers' clock,
/// never an unclean leader.
pub const VOTES_CONFIG: [(&str, &str); 5] = [
    ("retention.ms", "604800000"),
    ("retention.bytes", "-1"),
    ("segment.ms", "3600000"),
    ("message.timestamp.type", "LogAppendTime"),
    ("unclean.leader.election.enable", "false"),
];

/// Creates the votes topic and its dead-letter topic if they do not exist yet.
pub async fn ensure(kafka: &KafkaArgs) -> Result<(), KafkaError> {
    if !kafka.create_topics {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = kafka.client_config("bandvote-admin").create()?;
    let dead_letters = kafka.dead_letter_topic();
    let replication = || TopicReplication::Fixed(kafka.replication_factor);
    let mut votes = NewTopic::new(&kafka.topic, kafka.partitions, replication());
    for (name, value) in VOTES_CONFIG {
        votes = votes.set(name, value);
    }
    let topics = [votes, NewTopic::new(&dead_letters, 1, replication())];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic, %code, "cannot create topic"));
            }
        }
    }
    Ok(())
}

/// Why a topic could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    Kafka(KafkaError),
    /// The broker does not know the topic.
    NoTopic(String),
    /// The end was not reached in time.
    Timeout(Duration),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Kafka(err) => err.fmt(f),
            ReadError::NoTopic(topic) => write!(f, "topic {topic} not found"),
            ReadError::Timeout(within) => write!(f, "the topic was not read to its end within {within:?}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<KafkaError> for ReadError {
    fn from(err: KafkaError) -> Self {
        ReadError::Kafka(err)
    }
}

/// Reads every record `topic` holds, from each partition's first held offset to its end as it was
/// when the read began, with `consumer` assigned (it joins no group and commits nothing), handing
/// each record to `record`. Returns the partitions whose oldest records are gone (retention), with
/// the first offset still held.
pub fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    within: Duration,
    mut record: impl FnMut(&BorrowedMessage<'_>),
) -> Result<BTreeMap<i32, i64>, ReadError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(|| ReadError::NoTopic(topic.into()))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut truncated = BTreeMap::new();
    for partition in found.partitions() {
        let id = partition.id();
        let (low, high) = consumer.fetch_watermarks(topic, id, Duration::from_secs(10))?;
        if low > 0 {
            truncated.insert(id, low);
        }
        if high > low {
            assignment.add_partition_offset(topic, id, Offset::Offset(low))?;
            ends.insert(id, high);
        }
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + within;
    while !ends.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(ReadError::Timeout(within));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message?;
        let Some(&end) = ends.get(&message.partition()) else { continue };
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
        }
        if message.offset() < end {
            record(&message);
        }
    }
    Ok(truncated)
}

/// The committed offset of each of `partitions` of `topic` for the group `consumer` is configured
/// with (`group.id`), waiting for the broker at most `timeout`; partitions without one are left out.
pub fn committed(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let mut wanted = TopicPartitionList::new();
    for &partition in partitions {
        wanted.add_partition(topic, partition);
    }
    let found = consumer.committed_offsets(wanted, timeout)?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect())
}
