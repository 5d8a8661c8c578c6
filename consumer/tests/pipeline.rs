//! The whole pipeline against the real local services: ingest (in-process) → Kafka → consumer (in
//! process, or as separate processes that get killed and scaled) → Redis tallies + MongoDB log.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bandvote_domain::LogDocument;
use bandvote_proto::{
    confproto::{RequestId, get_info_client::GetInfoClient},
    v1::{Vote, votes_client::VotesClient},
};
use bandvote_testkit::{
    Services, Tallies, VoteLog, read_tallies,
    servers::{Kind, PrivateServer, SlowProxy},
    unique, vote, wait_for,
};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod audit;
mod contest;
mod counting;
mod faults;
mod kafka_auth;
mod wasm_route;

/// One test's isolated pipeline: its own topic, group, Redis prefix and MongoDB database, with
/// ingest running in this process.
struct Pipeline {
    services: Services,
    topic: String,
    group: String,
    prefix: String,
    database: String,
    http: SocketAddr,
    grpc: SocketAddr,
    stop: CancellationToken,
    http_client: reqwest::Client,
}

impl Pipeline {
    async fn start(name: &str) -> Self {
        let id = unique(name);
        Pipeline::start_with(&id, Services::local(), format!("votes-{id}"), &[]).await
    }

    async fn start_with(id: &str, services: Services, topic: String, ingest_args: &[&str]) -> Self {
        bandvote_ops::telemetry::init_logs(&bandvote_ops::config::TelemetryArgs {
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            format: "text".into(),
        });
        let config = bandvote_ingest::Config::parse_from(services.ingest_args(&topic, ingest_args));
        let ingest = bandvote_ingest::Ingest::build(config).await.expect("ingest starts");
        let (http, grpc) = (ingest.http_addr(), ingest.grpc_addr().expect("the gRPC route is served"));
        let stop = CancellationToken::new();
        tokio::spawn(ingest.run_until_stopped(stop.clone()));
        Pipeline {
            services,
            group: format!("group-{id}"),
            prefix: format!("test-{id}"),
            database: format!("t{}", id.replace('-', "_")),
            topic,
            http,
            grpc,
            stop,
            http_client: reqwest::Client::new(),
        }
    }

    /// The consumer's arguments for this pipeline.
    fn consumer_args(&self) -> Vec<String> {
        self.consumer_args_on(0)
    }

    /// The consumer's arguments for this pipeline, serving its metrics on `port`.
    fn consumer_args_on(&self, port: u16) -> Vec<String> {
        [
            &format!("--port={port}"),
            "--kafka-session-timeout=6s",
            &format!("--kafka-brokers={}", self.services.kafka_brokers),
            &format!("--kafka-topic={}", self.topic),
            &format!("--kafka-group={}", self.group),
            &format!("--redis-url={}", self.services.redis_url),
            &format!("--redis-key-prefix={}", self.prefix),
            &format!("--mongodb-uri={}", self.services.mongodb_uri),
            &format!("--mongodb-database={}", self.database),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs a consumer in this process until it is stopped.
    async fn consume_in_process(&self) -> InProcess {
        self.consume_in_process_with(&[]).await
    }

    /// Runs a consumer with more arguments in this process until it is stopped.
    async fn consume_in_process_with(&self, extra: &[&str]) -> InProcess {
        let args = std::iter::once("bandvote-consumer".to_owned())
            .chain(self.consumer_args())
            .chain(extra.iter().map(|arg| (*arg).to_owned()));
        let config = bandvote_consumer::Config::parse_from(args);
        let service = bandvote_consumer::ConsumerService::build(config).await.expect("consumer starts");
        let stop = CancellationToken::new();
        let addr = service.addr();
        let task = tokio::spawn(service.run_until_stopped(stop.clone()));
        InProcess { stop, task, addr }
    }

    /// Starts a consumer as a separate process.
    fn spawn_consumer(&self) -> Replica {
        self.spawn_consumer_on(0, &[])
    }

    /// Starts a consumer as a separate process that serves its metrics on `port`.
    fn spawn_consumer_on(&self, port: u16, extra: &[&str]) -> Replica {
        let child = Command::new(env!("CARGO_BIN_EXE_bandvote-consumer"))
            .args(self.consumer_args_on(port))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the consumer binary starts");
        Replica(child)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http_client
            .post(format!("http://{}{path}", self.http))
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("every reply is JSON"))
    }

    async fn votes_client(&self) -> VotesClient<tonic::transport::Channel> {
        VotesClient::connect(format!("http://{}", self.grpc)).await.expect("gRPC connects")
    }

    /// Waits until Redis has counted `expected` votes, then returns the tallies.
    async fn tallies_when_total(&self, expected: u64, within: Duration) -> Tallies {
        let (url, prefix) = (self.services.redis_url.clone(), self.prefix.clone());
        wait_for(&format!("{expected} votes counted in Redis"), within, || {
            let (url, prefix) = (url.clone(), prefix.clone());
            async move {
                let tallies = read_tallies(&url, &prefix).await;
                if tallies.total >= expected { Ok(tallies) } else { Err(format!("{} counted", tallies.total)) }
            }
        })
        .await
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.services.redis_url.as_str()).expect("Redis URL");
        client.get_multiplexed_async_connection().await.expect("Redis answers")
    }

    async fn vote_log(&self) -> VoteLog {
        VoteLog::open(&self.services.mongodb_uri, &self.database).await
    }

    /// Waits until MongoDB holds `expected` votes, then returns them by id.
    async fn logged_when_count(&self, expected: u64, within: Duration) -> BTreeMap<String, LogDocument> {
        let log = self.vote_log().await;
        wait_for(&format!("{expected} votes logged in MongoDB"), within, || async {
            let count = log.count().await;
            if count >= expected { Ok(()) } else { Err(format!("{count} logged")) }
        })
        .await;
        log.all().await
    }

    async fn finish(self) {
        self.stop.cancel();
        self.vote_log().await.drop_database().await;
        bandvote_testkit::clear_redis(&self.services.redis_url, &self.prefix).await;
    }
}

/// A consumer running in the test's process.
struct InProcess {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where its `/healthz`, `/readyz` and `/metrics` are.
    addr: SocketAddr,
}

impl InProcess {
    /// Stops the consumer as SIGTERM would and waits until it committed and left the group.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the consumer task ends").expect("the consumer stops cleanly");
    }
}

/// A consumer process, killed if the test ends without stopping it.
struct Replica(Child);

impl Replica {
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("the killed consumer is reaped");
    }

    /// Stops the consumer with SIGTERM, as Kubernetes does, and returns how it exited.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "SIGTERM sent");
        self.0.wait().expect("the consumer exits")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the tallies must be for a set of accepted votes.
#[derive(Debug, Default)]
struct Expected {
    ids: BTreeSet<String>,
    by_band: BTreeMap<String, u64>,
    by_album: BTreeMap<String, u64>,
    by_route: BTreeMap<String, u64>,
}

impl Expected {
    fn add(&mut self, id: &str, n: usize, route: &str) {
        assert!(self.ids.insert(id.to_owned()), "ingest gave two votes the id {id}");
        let (band, album, _, _) = vote(n);
        *self.by_band.entry(band.to_owned()).or_default() += 1;
        *self.by_album.entry(bandvote_domain::RedisKeys::album_field(band, album)).or_default() += 1;
        *self.by_route.entry(route.to_owned()).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Adds the votes of `other`, accepted too.
    fn extend(&mut self, other: Expected) {
        for id in other.ids {
            assert!(self.ids.insert(id.clone()), "ingest gave two votes the id {id}");
        }
        for (map, more) in [
            (&mut self.by_band, other.by_band),
            (&mut self.by_album, other.by_album),
            (&mut self.by_route, other.by_route),
        ] {
            for (field, n) in more {
                *map.entry(field).or_default() += n;
            }
        }
    }

    fn check(&self, tallies: &Tallies, logged: &BTreeMap<String, LogDocument>) {
        assert_eq!(tallies.total, self.total(), "total counted");
        assert_eq!(tallies.by_band, self.by_band, "votes per band");
        assert_eq!(tallies.by_album, self.by_album, "votes per album");
        assert_eq!(tallies.by_route, self.by_route, "votes per route");
        assert_eq!(tallies.leaderboard, self.by_band, "leaderboard");
        assert_eq!(tallies.per_second_sum, self.total(), "votes per second add up to the total");
        let logged_ids: BTreeSet<String> = logged.keys().cloned().collect();
        assert_eq!(logged_ids, self.ids, "exactly one MongoDB document per accepted vote");
    }
}

fn json_vote(n: usize) -> Value {
    let (name, album, year, rank) = vote(n);
    json!({"name": name, "album": album, "year": year, "rank": rank})
}

fn proto_vote(n: usize) -> Vote {
    let (name, album, year, rank) = vote(n);
    Vote { name: name.into(), album: album.into(), year: year.into(), rank: rank.into(), ..Vote::default() }
}

fn accepted_id(status: u16, reply: &Value) -> String {
    assert_eq!(status, 200, "vote refused: {reply}");
    reply["vote_id"].as_str().expect("an accepted vote has its id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_entry_point_counts_exactly_once_in_redis_and_mongodb() {
    let pipeline = Pipeline::start("entry-points").await;
    let consumer = pipeline.consume_in_process().await;
    let mut expected = Expected::default();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    let mut grpc = pipeline.votes_client().await;
    for _ in 0..5 {
        let i = next();
        let reply = grpc.cast(proto_vote(i)).await.expect("gRPC cast accepted");
        expected.add(&reply.get_ref().vote_id, i, "grpc");
    }
    let batch: Vec<usize> = (0..7).map(|_| next()).collect();
    let reply = grpc
        .cast_batch(tokio_stream::iter(batch.iter().map(|&i| proto_vote(i)).collect::<Vec<_>>()))
        .await
        .expect("gRPC batch accepted");
    assert_eq!(reply.get_ref().accepted, 7);
    for (&i, id) in batch.iter().zip(&reply.get_ref().vote_ids) {
        expected.add(id, i, "grpc");
    }
    let mut original = GetInfoClient::connect(format!("http://{}", pipeline.grpc)).await.expect("confproto connects");
    for _ in 0..4 {
        let i = next();
        let (name, album, year, rank) = vote(i);
        let request = RequestId { name: name.into(), album: album.into(), year: year.into(), rank: rank.into() };
        let info = original.return_info(request).await.expect("confproto accepted").into_inner().info;
        let id = info.strip_prefix("vote accepted: ").expect("the reply names the vote id");
        expected.add(id, i, "grpc");
    }
    for _ in 0..6 {
        let i = next();
        let (status, reply) = pipeline.post("/grpc/insert", &json_vote(i)).await;
        expected.add(&accepted_id(status, &reply), i, "grpc");
    }
    for path in ["/votes", "/rust/send_data", "/insert", "/", "/votes", "/rust/send_data"] {
        let i = next();
        let (status, reply) = pipeline.post(path, &json_vote(i)).await;
        expected.add(&accepted_id(status, &reply), i, "http");
    }
    // Numbers for year and rank, as newer clients send them.
    let i = next();
    let (name, album, _, _) = vote(i);
    let (status, reply) =
        pipeline.post("/votes", &json!({"name": name, "album": album, "year": 1997, "rank": 9.5})).await;
    expected.add(&accepted_id(status, &reply), i, "http");
    let batch: Vec<usize> = (0..9).map(|_| next()).collect();
    let (status, reply) =
        pipeline.post("/votes/batch", &json!({"votes": batch.iter().map(|&i| json_vote(i)).collect::<Vec<_>>()})).await;
    assert_eq!(status, 200, "batch refused: {reply}");
    for (&i, id) in batch.iter().zip(reply["vote_ids"].as_array().expect("batch ids")) {
        expected.add(id.as_str().expect("id"), i, "http");
    }

    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(30)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(30)).await;
    expected.check(&tallies, &logged);
    // Every document read as a log document (name, album, year, rank, route, received_at and
    // kafka are required), written with its time.
    assert!(logged.values().all(|document| document.logged_at.is_some()), "{logged:?}");
    for (album, average) in &tallies.rank_avg {
        assert!((0.0..=100.0).contains(average), "average rank of {album} is {average}");
    }
    let get = |path: &str| pipeline.http_client.get(format!("http://{}{path}", consumer.addr)).send();
    assert_eq!(get("/healthz").await.expect("answers").status().as_u16(), 200);
    assert_eq!(get("/readyz").await.expect("answers").status().as_u16(), 200);
    let metrics = get("/metrics").await.expect("answers").text().await.expect("text");
    for name in [
        "bandvote_consumer_votes_counted_total",
        "bandvote_consumer_votes_logged_total",
        "bandvote_consumer_batch_size_bucket",
        "bandvote_consumer_redis_write_seconds_bucket",
        "bandvote_consumer_mongo_write_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "consumer metrics lack {name}:\n{metrics}");
    }
    // Lag comes from librdkafka's statistics, published every 5 s.
    wait_for("the consumer lag gauge", Duration::from_secs(20), || async {
        let metrics = get("/metrics").await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        let lag = format!("bandvote_consumer_lag_messages{{topic=\"{}\"", pipeline.topic);
        if metrics.contains(&lag) { Ok(()) } else { Err("no lag gauge for this topic yet".into()) }
    })
    .await;
    consumer.stop().await;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_vote_id_counts_once_on_any_route() {
    let pipeline = Pipeline::start("same-id").await;
    let consumer = pipeline.consume_in_process().await;
    let mut grpc = pipeline.votes_client().await;
    let with_id = |n: usize, id: &str| {
        let mut vote = json_vote(n);
        vote["vote_id"] = json!(id);
        vote
    };
    // Twice on the HTTP route, then once more on each other entry point.
    for path in ["/votes", "/votes", "/rust/send_data", "/grpc/insert"] {
        let (status, reply) = pipeline.post(path, &with_id(1, "phone-502-1")).await;
        assert_eq!(accepted_id(status, &reply), "phone-502-1");
    }
    let reply = grpc.cast(Vote { vote_id: "phone-502-1".into(), ..proto_vote(1) }).await.expect("accepted");
    assert_eq!(reply.get_ref().vote_id, "phone-502-1");
    let (status, reply) =
        pipeline.post("/votes/batch", &json!([with_id(2, "phone-502-2"), with_id(2, "phone-502-2")])).await;
    assert_eq!(status, 200, "{reply}");
    // A vote that was not re-sent, to know when everything before it was consumed.
    let (status, reply) = pipeline.post("/votes", &with_id(3, "phone-502-3")).await;
    accepted_id(status, &reply);

    let mut expected = Expected::default();
    for (id, n) in [("phone-502-1", 1), ("phone-502-2", 2)] {
        expected.add(id, n, "http");
    }
    expected.add("phone-502-3", 3, "http");
    let logged = pipeline.logged_when_count(3, Duration::from_secs(30)).await;
    let tallies = pipeline.tallies_when_total(3, Duration::from_secs(30)).await;
    // Give any late duplicate the time to show up before checking that none did.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tallies_after = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(tallies, tallies_after);
    expected.check(&tallies, &logged);
    consumer.stop().await;
    pipeline.finish().await;
}

/// Sends `batches` HTTP batches of `size` votes, `pause` apart, plus one single vote after each;
/// returns what was accepted. Every request must be accepted.
fn send_load(pipeline: &Pipeline, batches: usize, size: usize, pause: Duration) -> tokio::task::JoinHandle<Expected> {
    let (client, base) = (pipeline.http_client.clone(), format!("http://{}", pipeline.http));
    tokio::spawn(async move {
        let mut expected = Expected::default();
        let mut n = 0;
        for _ in 0..batches {
            let numbers: Vec<usize> = (n..n + size).collect();
            n += size;
            let body = json!(numbers.iter().map(|&i| json_vote(i)).collect::<Vec<_>>());
            let reply: Value = client
                .post(format!("{base}/votes/batch"))
                .json(&body)
                .send()
                .await
                .expect("ingest answers")
                .json()
                .await
                .expect("JSON");
            let ids = reply["vote_ids"].as_array().unwrap_or_else(|| panic!("batch refused: {reply}"));
            for (&i, id) in numbers.iter().zip(ids) {
                expected.add(id.as_str().expect("id"), i, "http");
            }
            let response =
                client.post(format!("{base}/rust/send_data")).json(&json_vote(n)).send().await.expect("ingest answers");
            let reply: Value = response.json().await.expect("JSON");
            expected.add(reply["vote_id"].as_str().unwrap_or_else(|| panic!("vote refused: {reply}")), n, "http");
            n += 1;
            tokio::time::sleep(pause).await;
        }
        expected
    })
}

async fn counted(pipeline: &Pipeline) -> u64 {
    read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await.total
}

/// Waits until the consumers counted more than `than` votes.
async fn progress_beyond(pipeline: &Pipeline, than: u64) -> u64 {
    wait_for(&format!("more than {than} votes counted"), Duration::from_secs(60), || async {
        let now = counted(pipeline).await;
        if now > than { Ok(now) } else { Err(format!("{now} counted")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_with_sigkill_mid_stream_counts_exactly() {
    let pipeline = Pipeline::start("sigkill").await;
    let load = send_load(&pipeline, 150, 20, Duration::from_millis(100));
    let mut consumer = pipeline.spawn_consumer();
    let mut seen = 0;
    let mut counted_at_kills = Vec::new();
    for _ in 0..3 {
        seen = progress_beyond(&pipeline, seen).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        consumer.kill();
        counted_at_kills.push(counted(&pipeline).await);
        consumer = pipeline.spawn_consumer();
    }
    let expected = load.await.expect("the load finished");
    for at_kill in &counted_at_kills {
        assert!(*at_kill < expected.total(), "a kill came after everything was counted: {counted_at_kills:?}");
    }
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(90)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    expected.check(&tallies, &logged);
    consumer.kill();
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_is_refused_in_bounded_time_and_recovery_needs_no_restart() {
    let mut broker = PrivateServer::start(Kind::Kafka);
    let services = Services { kafka_brokers: broker.address(), ..Services::local() };
    // The broker takes connections a little before it can create topics.
    let kafka = bandvote_ops::config::KafkaArgs {
        brokers: broker.address(),
        topic: format!("votes-{}", unique("kafka-down")),
        partitions: 6,
        replication_factor: 1,
        create_topics: true,
        security: Default::default(),
    };
    wait_for("the private broker to create topics", Duration::from_secs(60), || async {
        bandvote_ops::topics::ensure(&kafka).await.map_err(|e| e.to_string())
    })
    .await;
    let bound = Duration::from_secs(2);
    let id = unique("kafka-down");
    let pipeline = Pipeline::start_with(&id, services, kafka.topic.clone(), &["--kafka-produce-timeout=2s"]).await;
    let consumer = pipeline.consume_in_process().await;
    let mut grpc = pipeline.votes_client().await;
    let mut expected = Expected::default();
    eprintln!("kafka-down: pipeline started");
    for i in 0..10 {
        let (status, reply) = pipeline.post(if i % 2 == 0 { "/votes" } else { "/grpc/insert" }, &json_vote(i)).await;
        expected.add(&accepted_id(status, &reply), i, if i % 2 == 0 { "http" } else { "grpc" });
    }

    eprintln!("kafka-down: 10 votes accepted; stopping the broker");
    broker.stop();
    eprintln!("kafka-down: broker stopped");
    let slack = Duration::from_secs(1);
    for (n, path) in ["/votes", "/rust/send_data", "/grpc/insert", "/votes/batch"].into_iter().enumerate() {
        let body =
            if path == "/votes/batch" { json!([json_vote(100 + n), json_vote(200 + n)]) } else { json_vote(100 + n) };
        let started = std::time::Instant::now();
        let (status, reply) = pipeline.post(path, &body).await;
        let took = started.elapsed();
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{path} with Kafka down: {reply}"
        );
        if path == "/votes/batch" {
            assert_eq!(reply["error"]["failed"].as_array().map(Vec::len), Some(2), "{reply}");
        } else {
            assert!(reply["error"]["vote_id"].is_string(), "a refused vote names its id for a safe retry: {reply}");
        }
        assert!(took <= bound + slack, "{path} took {took:?} to refuse, more than the {bound:?} bound");
    }
    let started = std::time::Instant::now();
    let status = grpc.cast(proto_vote(300)).await.expect_err("refused while Kafka is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() <= bound + slack, "gRPC took {:?} to refuse", started.elapsed());

    eprintln!("kafka-down: refusals checked; restarting the broker");
    broker.restart();
    eprintln!("kafka-down: broker restarted");
    // Ingest was not restarted: it must accept again by itself.
    let (status, reply) = wait_for("ingest to accept votes again", Duration::from_secs(90), || async {
        let (status, reply) = pipeline.post("/votes", &json_vote(400)).await;
        if status == 200 { Ok((status, reply)) } else { Err(reply.to_string()) }
    })
    .await;
    expected.add(&accepted_id(status, &reply), 400, "http");
    let reply = grpc.cast(proto_vote(401)).await.expect("gRPC accepts again");
    expected.add(&reply.get_ref().vote_id, 401, "grpc");

    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(90)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    expected.check(&tallies, &logged);
    consumer.stop().await;
    pipeline.finish().await;
}

/// Produces raw records to a topic, as a foreign or broken producer would.
async fn produce_raw(brokers: &str, topic: &str, records: &[(&str, &[u8])]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .create()
        .expect("a producer");
    for (key, payload) in records {
        producer
            .send(FutureRecord::to(topic).key(*key).payload(*payload), Duration::from_secs(5))
            .await
            .expect("the raw record is written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_that_are_not_votes_go_to_the_dead_letter_topic_and_never_stop_counting() {
    let pipeline = Pipeline::start("dead-letters").await;
    let consumer = pipeline.consume_in_process().await;
    let (status, reply) = pipeline.post("/votes", &json_vote(1)).await;
    let mut expected = Expected::default();
    expected.add(&accepted_id(status, &reply), 1, "http");
    let future_version = br#"{"v":2,"vote_id":"from-the-future"}"#;
    let bad_rank = br#"{"v":1,"vote_id":"bad-rank","name":"A","album":"B","year":1997,"rank":1000,"route":"http","received_at_ms":0}"#;
    produce_raw(
        &pipeline.services.kafka_brokers,
        &pipeline.topic,
        &[("garbage", b"not json at all"), ("future", future_version), ("bad-rank", bad_rank), ("empty", b"")],
    )
    .await;
    for n in 2..5 {
        let (status, reply) = pipeline.post("/rust/send_data", &json_vote(n)).await;
        expected.add(&accepted_id(status, &reply), n, "http");
    }
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(30)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(30)).await;
    expected.check(&tallies, &logged);
    let tallies = wait_for("4 dead letters counted", Duration::from_secs(30), || async {
        let tallies = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
        if tallies.dead_letters == 4 { Ok(tallies) } else { Err(format!("{} counted", tallies.dead_letters)) }
    })
    .await;
    assert_eq!(tallies.total, expected.total(), "dead letters are not votes");
    let dead: BTreeSet<Vec<u8>> =
        bandvote_testkit::read_topic(&pipeline.services.kafka_brokers, &format!("{}.dlq", pipeline.topic))
            .into_iter()
            .map(|(key, _)| key.expect("the original key is kept"))
            .collect();
    let keys: BTreeSet<Vec<u8>> =
        ["garbage", "future", "bad-rank", "empty"].iter().map(|k| k.as_bytes().to_vec()).collect();
    assert_eq!(dead, keys, "each undecodable record is in the dead-letter topic once");
    consumer.stop().await;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_log_store_does_not_hold_back_the_tallies() {
    let mut pipeline = Pipeline::start("slow-log").await;
    let direct = pipeline.services.mongodb_uri.clone();
    let proxy = SlowProxy::start(direct.trim_start_matches("mongodb://").trim_end_matches('/').to_owned()).await;
    pipeline.services.mongodb_uri = format!("mongodb://{}/?directConnection=true", proxy.addr);
    let consumer = pipeline.consume_in_process().await;
    proxy.stall(true);
    let load = send_load(&pipeline, 10, 20, Duration::from_millis(20));
    let expected = load.await.expect("the load finished");
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(30)).await;
    assert_eq!(tallies.by_band, expected.by_band);
    let log = VoteLog::open(&direct, &pipeline.database).await;
    assert_eq!(log.count().await, 0, "nothing could be logged while the log store was stalled");
    proxy.stall(false);
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    expected.check(&tallies, &logged);
    consumer.stop().await;
    pipeline.services.mongodb_uri = direct;
    pipeline.finish().await;
}
