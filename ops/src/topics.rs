//! Creating the vote topics when they are missing.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
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
