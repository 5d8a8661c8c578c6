//! Ingest against the real local Kafka: what it refuses, how it refuses it, and that nothing it
//! refused reaches Kafka.

use std::net::SocketAddr;

use bandvote_domain::VoteEvent;
use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::{
    BANDS, Services, read_topic, unique,
    votes::{self, with, without},
};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod client_limits;
mod cluster;
mod ops_port;

struct Ingest {
    http: SocketAddr,
    grpc: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    ops: SocketAddr,
    topic: String,
    brokers: String,
    stop: CancellationToken,
    client: reqwest::Client,
}

impl Ingest {
    async fn start(name: &str, extra: &[&str]) -> Self {
        let services = Services::local();
        let topic = format!("votes-{}", unique(name));
        let config = bandvote_ingest::Config::parse_from(services.ingest_args(&topic, extra));
        let ingest = bandvote_ingest::Ingest::build(config).await.expect("ingest starts");
        let (http, grpc, ops) = (ingest.http_addr(), ingest.grpc_addr().expect("gRPC served"), ingest.ops_addr());
        let stop = CancellationToken::new();
        tokio::spawn(ingest.run_until_stopped(stop.clone()));
        Ingest { http, grpc, ops, topic, brokers: services.kafka_brokers, stop, client: reqwest::Client::new() }
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply to {path} is not JSON: {text}")))
    }

    /// A gRPC channel to this ingest.
    async fn channel(&self) -> tonic::transport::Channel {
        let uri = format!("http://{}", self.grpc);
        tonic::transport::Channel::from_shared(uri).expect("URI").connect().await.expect("gRPC connects")
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }
}

/// The metrics page of the ops port at `ops` (a URL).
async fn metrics_text(client: &reqwest::Client, ops: &str) -> String {
    client.get(format!("{ops}/metrics")).send().await.expect("answers").text().await.expect("text")
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn roster_file() -> std::path::PathBuf {
    let bands: Vec<Value> = BANDS.iter().map(|(name, albums)| json!({"name": name, "albums": albums})).collect();
    let path = std::env::temp_dir().join(format!("{}.json", unique("roster")));
    std::fs::write(&path, json!({"bands": bands}).to_string()).expect("roster written");
    path
}

/// The field errors of an error reply, as `field: problem` lines.
fn field_problems(reply: &Value) -> Vec<String> {
    reply["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no field errors in {reply}"))
        .iter()
        .map(|f| format!("{}: {}", f["field"].as_str().expect("field"), f["problem"].as_str().expect("problem")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_clear_error_and_nothing_of_it_reaches_kafka() {
    let roster = roster_file();
    let ingest = Ingest::start(
        "bad-input",
        &[&format!("--roster-file={}", roster.display()), "--max-body-bytes=4096", "--max-batch-votes=10"],
    )
    .await;
    let good = votes::good();
    // (vote, the field errors expected) for both JSON entry points.
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (without("name"), vec!["name: is required"]),
        (without("rank"), vec!["rank: is required"]),
        (with("album", json!("")), vec!["album: must not be empty"]),
        (with("name", json!("   ")), vec!["name: must not be empty"]),
        (with("name", json!(42)), vec!["name: must be a string, got a number"]),
        (with("year", json!(true)), vec!["year: must be a string or a number, got boolean"]),
        (with("album", json!("x".repeat(101))), vec!["album: must be at most 100 characters, got 101"]),
        (with("year", json!("nineteen")), vec!["year: must be a whole number such as \"1997\", got \"nineteen\""]),
        (with("rank", json!("9,5")), vec!["rank: must be a decimal number such as \"9.5\", got \"9,5\""]),
        (with("rank", json!("-1")), vec!["rank: must be a decimal number such as \"9.5\", got \"-1\""]),
        (with("year", json!(1492)), vec!["year: must be between 1900 and 2100"]),
        (
            with("vote_id", json!("has spaces")),
            vec!["vote_id: may contain only letters, digits, '.', '_', ':' and '-'"],
        ),
        (with("name", json!("Unknown Band")), vec!["name: \"Unknown Band\" is not a band in this contest"]),
        (
            with("album", json!("Mil palabras")),
            vec!["album: \"Mil palabras\" is not an album of \"Alux Nahual\" in this contest"],
        ),
        (
            json!({"name": 1, "album": null, "year": "x", "rank": []}),
            vec![
                "name: must be a string, got a number",
                "album: must be a string, got null",
                "year: must be a whole number such as \"1997\", got \"x\"",
                "rank: must be a string or a number, got array",
            ],
        ),
        (json!(["not", "a", "vote"]), vec!["vote: must be a JSON object, got array"]),
    ];
    for path in ["/votes", "/rust/send_data", "/grpc/insert"] {
        for (vote, expected) in &cases {
            let (status, reply) = ingest.post(path, vote).await;
            assert_eq!(status, 400, "{path} {vote}: {reply}");
            if path == "/grpc/insert" && expected[0].contains("in this contest") {
                // The roster is the gRPC server's to check: its message comes back whole.
                assert_eq!(reply["error"]["message"], expected[0], "{path} {vote}");
            } else {
                assert_eq!(field_problems(&reply), *expected, "{path} {vote}");
                assert_eq!(reply["error"]["code"], "invalid_vote");
            }
        }
        let (status, reply) = ingest.post_raw(path, "{\"name\": \"Alux").await;
        assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("malformed_json")), "{path}: {reply}");
        assert!(
            reply["error"]["message"].as_str().expect("message").starts_with("the body is not valid JSON"),
            "{reply}"
        );
        let (status, reply) = ingest.post_raw(path, format!("{{\"name\": \"{}\"}}", "a".repeat(5000))).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (413, Some("body_too_large")), "{path}: {reply}");
    }
    // A batch is checked whole; one bad vote refuses it, naming each bad one by index.
    let (status, reply) =
        ingest.post("/votes/batch", &json!([good, without("year"), with("rank", json!("abc"))])).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["message"], "2 of 3 votes are invalid; nothing was accepted");
    assert_eq!(reply["error"]["votes"][0]["index"], 1);
    assert_eq!(reply["error"]["votes"][1]["fields"][0]["field"], "rank");
    let (status, reply) = ingest.post("/votes/batch", &json!(vec![good.clone(); 11])).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (413, Some("batch_too_large")), "{reply}");
    let (status, reply) = ingest.post("/votes/batch", &json!({"ballots": []})).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("malformed_json")), "{reply}");
    // Errors for paths and methods are JSON too.
    let (status, reply) = ingest.post("/nowhere", &good).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")));
    for (method, path, message) in [
        (reqwest::Method::GET, "/votes", "GET is not allowed here; this path takes POST with a JSON vote"),
        (reqwest::Method::DELETE, "/healthz", "DELETE is not allowed here; this path takes GET"),
    ] {
        let response =
            ingest.client.request(method, format!("http://{}{path}", ingest.http)).send().await.expect("answers");
        assert_eq!(response.status().as_u16(), 405);
        let reply = response.json::<Value>().await.expect("JSON");
        assert_eq!(
            (reply["error"]["code"].as_str(), reply["error"]["message"].as_str()),
            (Some("method_not_allowed"), Some(message))
        );
    }

    // gRPC: INVALID_ARGUMENT naming the fields.
    let mut grpc = VotesClient::connect(format!("http://{}", ingest.grpc)).await.expect("gRPC connects");
    let vote = Vote {
        name: "Alux Nahual".into(),
        album: "Conquista".into(),
        year: "1990".into(),
        rank: "9.5".into(),
        ..Vote::default()
    };
    for (bad, message) in [
        (Vote { name: String::new(), ..vote.clone() }, "name: is required"),
        (Vote { year: "199O".into(), ..vote.clone() }, "year: must be a whole number such as \"1997\", got \"199O\""),
        (
            Vote { rank: "high".into(), year: "3000".into(), ..vote.clone() },
            "year: must be between 1900 and 2100; rank: must be a decimal number such as \"9.5\", got \"high\"",
        ),
        (Vote { name: "Nobody".into(), ..vote.clone() }, "name: \"Nobody\" is not a band in this contest"),
    ] {
        let status = grpc.cast(bad).await.expect_err("refused");
        assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, message));
    }
    let status = grpc
        .cast_batch(tokio_stream::iter(vec![vote.clone(), Vote { album: String::new(), ..vote.clone() }]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "1 of 2 votes are invalid; nothing was accepted: vote 1: album: is required");
    let big = Vote { voter_id: "x".repeat(70 * 1024), ..vote.clone() };
    assert_eq!(grpc.cast(big).await.expect_err("too large").code(), tonic::Code::OutOfRange);

    // One good vote last: the topic must hold it and nothing else.
    let (status, reply) = ingest.post("/votes", &with("vote_id", json!("the-only-good-one"))).await;
    assert_eq!(status, 200, "{reply}");
    let records = read_topic(&ingest.brokers, &ingest.topic);
    assert_eq!(records.len(), 1, "only the valid vote reached Kafka");
    let event = VoteEvent::decode(records[0].1.as_deref()).expect("a vote event");
    assert_eq!(event.vote_id.as_str(), "the-only-good-one");
    assert_eq!(records[0].0.as_deref(), Some(&b"the-only-good-one"[..]), "the record key is the vote id");
    let _ = std::fs::remove_file(roster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_reflection_answer() {
    let ingest = Ingest::start("ops", &[]).await;
    let get = |path: &str| ingest.client.get(format!("http://{}{path}", ingest.ops)).send();
    assert_eq!(get("/healthz").await.expect("answers").status().as_u16(), 200);
    // Ready once Kafka has the new topic in its metadata.
    bandvote_testkit::wait_for("ingest to be ready", std::time::Duration::from_secs(15), || async {
        let ready = get("/readyz").await.map_err(|e| e.to_string())?;
        if ready.status().is_success() { Ok(()) } else { Err(ready.text().await.unwrap_or_default()) }
    })
    .await;
    let (status, _) = ingest.post("/votes", &json!({"name": "A", "album": "B", "year": "1997", "rank": "1"})).await;
    assert_eq!(status, 200);
    let (status, _) = ingest.post("/votes", &json!({"name": "A"})).await;
    assert_eq!(status, 400);
    let metrics = get("/metrics").await.expect("answers").text().await.expect("text");
    for line in [
        "bandvote_ingest_votes_accepted_total{route=\"http\"}",
        "bandvote_ingest_votes_rejected_total{route=\"http\",reason=\"invalid\"}",
        "bandvote_ingest_produce_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(ingest.channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "bandvote.v1.Votes".into() })
        .await
        .expect("health answers");
    assert_eq!(reply.get_ref().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_both_vote_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ingest = Ingest::start("reflection", &[]).await;
    let mut reflection = ServerReflectionClient::new(ingest.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let reply = replies.message().await.expect("a reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["bandvote.v1.Votes", "confproto.getInfo", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == service), "reflection lacks {service}: {names:?}");
    }
}

/// The ingest binary as a process of its own, on free ports, publishing to `topic`; killed when
/// dropped.
struct IngestProcess {
    child: std::process::Child,
    /// The HTTP port's URL.
    url: String,
    /// The ops port's URL.
    ops: String,
    client: reqwest::Client,
}

impl IngestProcess {
    /// Starts it and waits until it is ready.
    async fn start(topic: &str) -> Self {
        let services = Services::local();
        let free_port =
            || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let (http_port, grpc_port, ops_port) = (free_port(), free_port(), free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bandvote-ingest"))
            .args([
                format!("--port={http_port}"),
                format!("--grpc-port={grpc_port}"),
                format!("--ops-port={ops_port}"),
                format!("--kafka-brokers={}", services.kafka_brokers),
                format!("--kafka-topic={topic}"),
            ])
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the ingest binary starts");
        let process = IngestProcess {
            child,
            url: format!("http://127.0.0.1:{http_port}"),
            ops: format!("http://127.0.0.1:{ops_port}"),
            client: reqwest::Client::new(),
        };
        bandvote_testkit::wait_for("ingest to be ready", std::time::Duration::from_secs(30), || async {
            match process.client.get(format!("{}/readyz", process.ops)).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        process
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let services = Services::local();
    let topic = format!("votes-{}", unique("sigterm"));
    let mut ingest = IngestProcess::start(&topic).await;
    let (client, url) = (ingest.client.clone(), ingest.url.clone());
    // Four senders cast votes back to back until ingest stops taking connections; SIGTERM comes
    // while they are at it. Every answer that arrives must be whole, and every accepted vote in Kafka.
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in (sender..).step_by(4) {
                    let (name, album, year, rank) = bandvote_testkit::vote(n);
                    let vote = json!({"name": name, "album": album, "year": year, "rank": rank});
                    let Ok(response) = client.post(format!("{url}/votes")).json(&vote).send().await else { break };
                    assert_eq!(response.status().as_u16(), 200, "a vote in flight at SIGTERM is still accepted");
                    let reply: Value = response.json().await.expect("a whole JSON answer");
                    accepted.push(reply["vote_id"].as_str().expect("vote id").to_owned());
                }
                accepted
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status =
        std::process::Command::new("kill").arg("-TERM").arg(ingest.child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.expect("the sender ends when ingest stops"));
    }
    assert!(!accepted.is_empty(), "votes were accepted before SIGTERM");
    let exit = ingest.child.wait().expect("ingest exits");
    assert!(exit.success(), "ingest exits cleanly on SIGTERM, got {exit}");
    let mut in_kafka: Vec<String> = read_topic(&services.kafka_brokers, &topic)
        .into_iter()
        .map(|(key, _)| String::from_utf8(key.expect("key")).expect("utf-8"))
        .collect();
    in_kafka.sort();
    accepted.sort();
    assert_eq!(in_kafka, accepted, "every vote answered as accepted is in Kafka, and only those");
}

/// Sends `n` copies of a vote as client `from` (X-Forwarded-For); returns the statuses.
async fn votes_from(ingest: &Ingest, from: &str, n: usize) -> Vec<(u16, Value, Option<String>)> {
    let mut answers = Vec::new();
    for _ in 0..n {
        let response = ingest
            .client
            .post(format!("http://{}/votes", ingest.http))
            .header("x-forwarded-for", from)
            .json(&json!({"name": BANDS[0].0, "album": BANDS[0].1[0], "year": "1990", "rank": "9"}))
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        let retry = response.headers().get("retry-after").map(|v| v.to_str().expect("ASCII").to_owned());
        answers.push((status, response.json().await.expect("JSON"), retry));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_others_do_not_and_only_accepted_votes_reach_kafka() {
    let ingest =
        Ingest::start("rate", &["--rate-limit-per-client=0.5", "--rate-limit-burst=3", "--trusted-proxies=1"]).await;
    let greedy = votes_from(&ingest, "203.0.113.7", 5).await;
    let statuses: Vec<u16> = greedy.iter().map(|(status, ..)| *status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{greedy:?}");
    let (_, refused, retry) = &greedy[3];
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    // One token comes back every 2 s: the wait is at most 2 s, less the time the votes took.
    let retry: Option<u64> = retry.as_deref().and_then(|seconds| seconds.parse().ok());
    assert!(retry.is_some_and(|seconds| (1..=2).contains(&seconds)), "Retry-After {retry:?}");
    let other = votes_from(&ingest, "203.0.113.7, 198.51.100.1", 1).await;
    assert_eq!(other[0].0, 200, "another client has its own budget: {other:?}");

    // gRPC: the same budget per client, from the x-forwarded-for metadata.
    let mut client = VotesClient::new(ingest.channel().await);
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (band, album) = (BANDS[1].0, BANDS[1].1[0]);
        let vote =
            Vote { name: band.into(), album: album.into(), year: "1990".into(), rank: "8".into(), ..Vote::default() };
        let mut request = tonic::Request::new(vote);
        request.metadata_mut().insert("x-forwarded-for", "192.0.2.44".parse().expect("ASCII"));
        codes.push(client.cast(request).await.map(drop).map_err(|s| s.code()));
    }
    assert_eq!(codes, [Ok(()), Ok(()), Ok(()), Err(tonic::Code::ResourceExhausted)]);

    let votes = read_topic(&ingest.brokers, &ingest.topic);
    assert_eq!(votes.len(), 3 + 1 + 3, "only accepted votes reach Kafka");
}

/// Opens a request whose body never finishes, so that it stays in flight.
async fn stalled_request(ingest: &Ingest) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(ingest.http).await.expect("connects");
    let head =
        "POST /votes HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_in_flight_limit_ingest_refuses_at_once_and_slow_requests_time_out() {
    use tokio::io::AsyncReadExt;
    let ingest = Ingest::start("overload", &["--max-in-flight=2", "--request-timeout=1500ms"]).await;
    let mut stalled = [stalled_request(&ingest).await, stalled_request(&ingest).await];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let (status, reply) = ingest.post("/votes", &json!({"name": "x", "album": "y", "year": "1990", "rank": "5"})).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("overloaded")), "{reply}");
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused at once, not queued");
    let mut grpc = VotesClient::new(ingest.channel().await);
    let (band, album) = (BANDS[0].0, BANDS[0].1[0]);
    let vote =
        Vote { name: band.into(), album: album.into(), year: "1990".into(), rank: "8".into(), ..Vote::default() };
    let refused = grpc.cast(vote.clone()).await.expect_err("over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    let health = ingest.client.get(format!("http://{}/healthz", ingest.http)).send().await.expect("answers");
    assert_eq!(health.status().as_u16(), 200, "health checks are not vote requests");

    // The stalled requests end with a JSON 503 at the request timeout, which frees their places.
    for stream in &mut stalled {
        let mut answer = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !answer.contains(r#"}}"#) {
            let mut chunk = [0; 1024];
            let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
            let n = read.unwrap_or_else(|_| panic!("no whole answer to a stalled request: {answer}")).expect("reads");
            assert!(n > 0, "closed without a whole answer: {answer}");
            answer.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    }
    assert!(grpc.cast(vote).await.is_ok(), "accepted again once the places are free");
    let (status, reply) =
        ingest.post("/votes", &json!({"name": band, "album": album, "year": "1990", "rank": "5"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(read_topic(&ingest.brokers, &ingest.topic).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_through_the_grpc_front_takes_one_place_in_flight() {
    // With one place, the front's request holds it; the gRPC call it makes to its own process
    // must not need a second one.
    let ingest = Ingest::start("front-once", &["--max-in-flight=1"]).await;
    let (band, album) = (BANDS[0].0, BANDS[0].1[0]);
    let vote = json!({"name": band, "album": album, "year": "1990", "rank": "5"});
    for _ in 0..3 {
        let (status, reply) = ingest.post("/grpc/insert", &vote).await;
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(read_topic(&ingest.brokers, &ingest.topic).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noop_header_skips_kafka_only_when_noop_routes_are_on() {
    let vote = json!({"name": BANDS[0].0, "album": BANDS[0].1[0], "year": "1990", "rank": "9"});
    let (band, album) = (BANDS[1].0, BANDS[1].1[0]);
    let proto =
        Vote { name: band.into(), album: album.into(), year: "1990".into(), rank: "8".into(), ..Vote::default() };
    let mut published = Vec::new();
    for noop_routes in [true, false] {
        let ingest = Ingest::start("noop", &[&format!("--noop-routes={noop_routes}")]).await;
        for (path, body) in [("/votes", vote.clone()), ("/votes/batch", json!([vote.clone(), vote.clone()]))] {
            let response = ingest
                .client
                .post(format!("http://{}{path}", ingest.http))
                .header("x-bandvote-noop", "1")
                .json(&body)
                .send()
                .await
                .expect("ingest answers");
            assert_eq!(response.status().as_u16(), 200, "{path}");
        }
        let bad = ingest.client.post(format!("http://{}/votes", ingest.http)).header("x-bandvote-noop", "1");
        let bad = bad.json(&json!({"name": "x"})).send().await.expect("ingest answers");
        assert_eq!(bad.status().as_u16(), 400, "a no-op vote is still checked");
        let mut grpc = VotesClient::new(ingest.channel().await);
        let mut request = tonic::Request::new(proto.clone());
        request.metadata_mut().insert("x-bandvote-noop", "1".parse().expect("ASCII"));
        grpc.cast(request).await.expect("accepted");
        published.push(read_topic(&ingest.brokers, &ingest.topic).len());
    }
    assert_eq!(published, [0, 4], "with NOOP_ROUTES on nothing reaches Kafka; off, the header is ignored");
}
