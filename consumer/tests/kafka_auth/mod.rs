//! Kafka with SCRAM users and ACLs, as on GKE (`k8s/base/kafka-users.yaml`): ingest, the consumer
//! and KEDA's lag reader each authenticate as their own user, and the broker's ACLs let each do
//! its own part only. Every denial here is observed from the broker, not assumed.

use std::{path::Path, time::Duration};

use bandvote_ops::config::{KafkaArgs, KafkaSecurityArgs, SecurityProtocol};
use bandvote_testkit::{
    Services, read_tallies,
    secure_kafka::{ADMIN, SecureKafka},
    unique, wait_for,
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    util::Timeout,
};

use super::{Pipeline, accepted_id, json_vote};

/// How long a denial or a record may take to show.
const WITHIN: Duration = Duration::from_secs(30);
/// The group `bandvote-audit --replay-kafka` reads in (assigned, never joined or committed).
const AUDIT_GROUP: &str = "bandvote-audit";

/// The SASL settings of a service that authenticates as `user` with the password in `file`.
fn sasl_args(user: &str, file: &Path) -> Vec<String> {
    vec![
        "--kafka-create-topics=false".to_owned(),
        "--kafka-security-protocol=sasl_plaintext".to_owned(),
        format!("--kafka-sasl-username={user}"),
        format!("--kafka-sasl-password-file={}", file.display()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_service_authenticates_as_its_own_kafka_user_and_may_do_only_its_part() {
    let kafka = SecureKafka::start(&["ingest", "consumer", "keda"]).await;
    let id = unique("kafka-auth");
    let topic = format!("votes-{id}");
    let dead_letters = format!("{topic}.dlq");
    let group = format!("group-{id}");
    kafka.create_topic(&topic, 2).await;
    kafka.create_topic(&dead_letters, 1).await;
    // The ACLs of k8s/base/kafka-users.yaml, for this test's topic and group. No cluster ACL: the
    // idempotent producers need Write on a topic only (Kafka 3.0 and later, KIP-679).
    kafka.allow("ingest", &["--topic", &topic], &["Write", "Describe"]);
    kafka.allow("consumer", &["--topic", &topic], &["Read", "Describe"]);
    kafka.allow("consumer", &["--group", &group], &["Read"]);
    kafka.allow("consumer", &["--topic", &dead_letters], &["Write", "Describe"]);
    kafka.allow("consumer", &["--group", AUDIT_GROUP], &["Describe"]);
    // Not in production: a group of ingest's own, so that reading the topic is decided by the
    // topic's ACLs (librdkafka reads only within a group, and ingest may use none).
    let probe_group = format!("probe-{id}");
    kafka.allow("ingest", &["--group", &probe_group], &["Read"]);
    kafka.allow("keda", &["--topic", &topic, "--group", &group], &["Describe"]);
    // The broker applies ACLs in the order they were made: once the last one shows, all do.
    wait_for("the last ACL to reach the broker", WITHIN, || {
        let keda = kafka.user_config("keda");
        let topic = topic.clone();
        async move { describe(keda, &topic).await }
    })
    .await;

    // Ingest with its user: the vote is accepted, so it is in the topic.
    let local = Services::local();
    let services = Services { kafka_brokers: kafka.brokers(), ..local.clone() };
    let ingest_args = sasl_args("ingest", &kafka.password_file("ingest"));
    let ingest_args: Vec<&str> = ingest_args.iter().map(String::as_str).collect();
    let pipeline = Pipeline::start_with(&id, services.clone(), topic.clone(), &ingest_args).await;
    assert_eq!(pipeline.group, group, "the ACLs name the pipeline's group");
    let (status, reply) = pipeline.post("/votes", &json_vote(1)).await;
    let vote_id = accepted_id(status, &reply);

    // Ingest with a wrong password: it starts, is not ready, says why, and refuses votes.
    let wrong = std::env::temp_dir().join(format!("{id}-wrong.password"));
    std::fs::write(&wrong, "not-the-password").expect("a password file");
    let mut wrong_args = sasl_args("ingest", &wrong);
    wrong_args.push("--kafka-produce-timeout=2s".to_owned());
    let wrong_args: Vec<&str> = wrong_args.iter().map(String::as_str).collect();
    let config = <bandvote_ingest::Config as clap::Parser>::parse_from(services.ingest_args(&topic, &wrong_args));
    let refused = bandvote_ingest::Ingest::build(config).await.expect("a wrong password is not a start-up failure");
    let (ops, http) = (refused.ops_addr(), refused.http_addr());
    let stop_refused = tokio_util::sync::CancellationToken::new();
    tokio::spawn(refused.run_until_stopped(stop_refused.clone()));
    let reason = wait_for("ingest with a wrong password to say why it is not ready", WITHIN, || async move {
        let response = reqwest::get(format!("http://{ops}/readyz")).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let reason = body["reason"].as_str().unwrap_or_default().to_owned();
        if status == 503 && reason.to_lowercase().contains("authentication") {
            Ok(reason)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert!(
        reason.contains("SCRAM-SHA-512") || reason.contains("credentials"),
        "the reason names the failure: {reason}"
    );
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{http}/votes"))
        .json(&json_vote(2))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status().as_u16(), 503, "a vote that Kafka never acknowledged is refused");
    stop_refused.cancel();
    let _ = std::fs::remove_file(&wrong);

    // The consumer with its user reads the votes with its group: the vote is counted.
    let consumer_args = sasl_args("consumer", &kafka.password_file("consumer"));
    let consumer_args: Vec<&str> = consumer_args.iter().map(String::as_str).collect();
    let consumer = pipeline.consume_in_process_with(&consumer_args).await;
    let tallies = pipeline.tallies_when_total(1, Duration::from_secs(60)).await;
    assert_eq!(tallies.total, 1, "the vote {vote_id} is counted once");
    // ... and writes the dead-letter topic: a record that is not a vote goes there.
    let admin: FutureProducer = kafka.user_config(ADMIN).create().expect("an admin producer");
    admin
        .send(FutureRecord::<str, str>::to(&topic).key("junk").payload("not a vote"), Timeout::After(WITHIN))
        .await
        .map_err(|(e, _)| e)
        .expect("the admin writes a record that is not a vote");
    let copied = first_record(kafka.user_config(ADMIN), &dead_letters).await;
    assert_eq!(copied.0.as_deref(), Some("not a vote"), "the dead letter is the record itself");
    assert!(copied.1.iter().any(|name| name == "bandvote.error"), "the dead letter says why: {:?}", copied.1);
    let (redis_url, prefix) = (local.redis_url.clone(), pipeline.prefix.clone());
    wait_for("the dead letter to be counted", WITHIN, || {
        let (redis_url, prefix) = (redis_url.clone(), prefix.clone());
        async move {
            let dead = read_tallies(&redis_url, &prefix).await.dead_letters;
            if dead == 1 { Ok(()) } else { Err(format!("{dead} dead letters")) }
        }
    })
    .await;

    // `bandvote-audit --replay-kafka`, run in a consumer pod, reads the topic as the consumer's user.
    let audit = KafkaArgs {
        brokers: kafka.brokers(),
        topic: topic.clone(),
        partitions: 2,
        replication_factor: 1,
        create_topics: false,
        security: KafkaSecurityArgs::sasl(SecurityProtocol::SaslPlaintext, "consumer", kafka.password("consumer")),
    };
    let replay = tokio::task::spawn_blocking(move || bandvote_consumer::audit::replay_kafka(&audit, WITHIN))
        .await
        .expect("the replay's thread")
        .expect("the consumer's user replays the topic");
    assert_eq!((replay.records, replay.not_votes), (2, 1), "the vote and the record that is not one");

    // The ingest user cannot read the votes, and the consumer user cannot write them.
    let denied = read_error(kafka.user_config("ingest"), &topic, &group).await;
    assert_eq!(denied, RDKafkaErrorCode::GroupAuthorizationFailed, "ingest reads in the consumers' group");
    let denied = read_error(kafka.user_config("ingest"), &topic, &probe_group).await;
    assert_eq!(denied, RDKafkaErrorCode::TopicAuthorizationFailed, "ingest reads the votes topic");
    let consumer_producer: FutureProducer = kafka.user_config("consumer").create().expect("a producer");
    let written = consumer_producer
        .send(FutureRecord::<str, str>::to(&topic).payload("forged"), Timeout::After(WITHIN))
        .await
        .map_err(|(e, _)| e.rdkafka_error_code());
    assert_eq!(written.map(drop), Err(Some(RDKafkaErrorCode::TopicAuthorizationFailed)), "the consumer writes votes");

    // KEDA's user reads the group's lag (committed offsets and the partitions' ends), not records.
    let committed = wait_for("the group's commit, read as KEDA's user", WITHIN, || {
        let keda = kafka.user_config("keda");
        let (topic, group) = (topic.clone(), group.clone());
        async move { committed_total(keda, &topic, &group).await }
    })
    .await;
    assert!(committed >= 2, "the group committed past the vote and the junk record: {committed}");
    let denied = read_error(kafka.user_config("keda"), &topic, &group).await;
    assert_eq!(denied, RDKafkaErrorCode::TopicAuthorizationFailed, "KEDA's user reads records");

    consumer.stop().await;
    pipeline.finish().await;
}

/// Whether `config`'s user may describe `topic` (its metadata has no error).
async fn describe(config: ClientConfig, topic: &str) -> Result<(), String> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(3)).map_err(|e| e.to_string())?;
        match metadata.topics().first().and_then(|t| t.error()) {
            None => Ok(()),
            Some(error) => Err(format!("{:?}", RDKafkaErrorCode::from(error))),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The error the broker gives `config`'s user for reading partition 0 of `topic` from the start
/// as a member of `group` (assigned, not subscribed: no join, no commit); panics if a record
/// arrives instead, or nothing within [`WITHIN`].
async fn read_error(config: ClientConfig, topic: &str, group: &str) -> RDKafkaErrorCode {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer =
            config.clone().set("group.id", &group).set("enable.auto.commit", "false").create().expect("a reader");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning).expect("an assignment");
        reader.assign(&assignment).expect("assign");
        let deadline = std::time::Instant::now() + WITHIN;
        while std::time::Instant::now() < deadline {
            match reader.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => panic!("read a record of {topic} at offset {}", message.offset()),
                Some(Err(KafkaError::MessageConsumption(code))) => return code,
                Some(Err(other)) => return other.rdkafka_error_code().unwrap_or_else(|| panic!("{other}")),
                None => {}
            }
        }
        panic!("no record and no error for {topic} within {WITHIN:?}")
    })
    .await
    .expect("the reader's thread")
}

/// The first record of `topic` (partition 0): its payload and its header names.
async fn first_record(config: ClientConfig, topic: &str) -> (Option<String>, Vec<String>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = config.clone().set("group.id", unique("dlq-reader")).create().expect("a reader");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning).expect("an assignment");
        reader.assign(&assignment).expect("assign");
        let deadline = std::time::Instant::now() + WITHIN;
        while std::time::Instant::now() < deadline {
            if let Some(message) = reader.poll(Duration::from_millis(500)) {
                let message = message.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
                let payload = message.payload().map(|p| String::from_utf8_lossy(p).into_owned());
                let headers =
                    message.headers().map(|h| h.iter().map(|h| h.key.to_owned()).collect()).unwrap_or_default();
                return (payload, headers);
            }
        }
        panic!("no record in {topic} within {WITHIN:?}")
    })
    .await
    .expect("the reader's thread")
}

/// The sum of `group`'s committed offsets on `topic`, as `config`'s user reads them (what KEDA's
/// scaler asks: OffsetFetch, and ListOffsets for the partitions' ends); `Err` while nothing is
/// committed yet or the broker refuses.
async fn committed_total(config: ClientConfig, topic: &str, group: &str) -> Result<i64, String> {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = config.clone().set("group.id", &group).create().map_err(|e| e.to_string())?;
        let mut ends = 0;
        for partition in 0..2 {
            let (_, high) =
                reader.fetch_watermarks(&topic, partition, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            ends += high;
        }
        let committed = bandvote_ops::topics::committed(&reader, &topic, &[0, 1], Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let total: i64 = committed.values().sum();
        if total >= ends && total > 0 { Ok(total) } else { Err(format!("committed {total} of {ends}")) }
    })
    .await
    .map_err(|e| e.to_string())?
}
