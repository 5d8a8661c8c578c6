//! The dead-letter topic: records that are not vote events are copied there, with the reason and
//! their origin in headers, so that they are kept for inspection and never stop the consumer.

use std::time::Duration;

use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use crate::pipeline::Record;

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(kafka: &bandvote_ops::config::KafkaArgs) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config("bandvote-consumer-dead-letters")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(DeadLetters { producer, topic: kafka.dead_letter_topic() })
    }

    /// Copies a record to the dead-letter topic and waits for Kafka's acknowledgement.
    pub async fn send(&self, source_topic: &str, record: &Record, reason: &str) -> Result<(), KafkaError> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "bandvote.error", value: Some(reason) })
            .insert(Header { key: "bandvote.source.topic", value: Some(source_topic) })
            .insert(Header { key: "bandvote.source.partition", value: Some(&partition) })
            .insert(Header { key: "bandvote.source.offset", value: Some(&offset) });
        let mut message = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key);
        }
        if let Some(payload) = &record.payload {
            message = message.payload(payload);
        }
        self.producer.send(message, Timeout::After(Duration::from_secs(1))).await.map(drop).map_err(|(err, _)| err)
    }
}
