//! The Wasm route end to end, in both shapes, with Kafka, a consumer, Redis and MongoDB: the
//! `wasi:http` component of `ingest-wasm` under `wasmtime serve` with a native ingest serving
//! `INGEST_ROUTES=wasm` beside it (its portable pod), and one ingest embedding the checker
//! component (`WASM_COMPONENT`).
//!
//! The components are built by `dev/build-wasm` and wasmtime is installed by `dev/tools`;
//! `dev/test` does both first. Without them these tests fail, saying how to get them.

use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use bandvote_domain::{LogDocument, Route};
use bandvote_testkit::{
    BANDS, Services, read_topic, serving, unique, vote,
    votes::{self, with, without},
};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Expected, Pipeline, accepted_id, json_vote};

/// `wasmtime serve` running the component on a free port, stopped when dropped.
struct WasmFront {
    child: Child,
    url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl WasmFront {
    /// Starts the component, forwarding to `native`, and waits until it answers `/healthz`.
    async fn start(native: &Native, env: &[(&str, &str)]) -> Self {
        let component = bandvote_testkit::wasm_component();
        let wasmtime = bandvote_testkit::wasmtime();
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("wasmtime")));
        let (ingest_url, ingest_ops_url) = (&native.url, &native.ops_url);
        let child = bandvote_testkit::wasmtime_serve(&wasmtime, &component, port, ingest_url, ingest_ops_url, env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} does not start: {e}; install wasmtime with `dev/tools install wasmtime`", wasmtime.display())
            });
        let mut front =
            WasmFront { child, url: format!("http://127.0.0.1:{port}"), log, client: reqwest::Client::new() };
        let healthz = format!("{}/healthz", front.url);
        if let Err(why) = serving(&mut front.child, &front.client, &healthz, Duration::from_secs(60)).await {
            let log = std::fs::read_to_string(&front.log).unwrap_or_default();
            panic!("wasmtime serve did not answer /healthz within 60 s: {why}\n{log}");
        }
        front
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        post_raw(&self.client, &self.url, path, body).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.url)).send().await.expect("the component answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("every reply is JSON"))
    }
}

impl Drop for WasmFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn post_raw(client: &reqwest::Client, base: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer to POST {base}{path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply to POST {base}{path} is not JSON: {text}")))
}

/// A native ingest in this process, serving only `routes`, publishing to `topic`.
struct Native {
    url: String,
    /// Its `/healthz`, `/readyz` and `/metrics`.
    ops_url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Native {
    async fn start(services: &Services, topic: &str, routes: &str, extra: &[&str]) -> Self {
        let mut args = vec![format!("--routes={routes}")];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = bandvote_ingest::Config::parse_from(services.ingest_args(topic, &args));
        let ingest = bandvote_ingest::Ingest::build(config).await.expect("the native ingest starts");
        let (addr, ops): (SocketAddr, SocketAddr) = (ingest.http_addr(), ingest.ops_addr());
        let stop = CancellationToken::new();
        let task = tokio::spawn(ingest.run_until_stopped(stop.clone()));
        Native { url: format!("http://{addr}"), ops_url: format!("http://{ops}"), stop, task }
    }

    /// Stops it and waits until its port is closed.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the ingest task ends").expect("ingest stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wasm_route_counts_each_vote_once_as_route_wasm() {
    let pipeline = Pipeline::start("wasm-route").await;
    let consumer = pipeline.consume_in_process().await;
    let producer = Native::start(&pipeline.services, &pipeline.topic, "wasm", &[]).await;
    let front = WasmFront::start(&producer, &[]).await;
    assert_eq!(front.get("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(front.get("/readyz").await, (200, json!({"status": "ready"})));

    let mut expected = Expected::default();
    let mut n = 100;
    let mut next = || {
        n += 1;
        n
    };
    for path in ["/wasm/votes", "/wasm/rust/send_data", "/wasm/insert", "/wasm", "/rust/send_data", "/insert", "/"] {
        let i = next();
        let (status, reply) = front.post(path, &json_vote(i)).await;
        expected.add(&accepted_id(status, &reply), i, "wasm");
    }
    // Numbers for year and rank, and the client's own vote id, sent twice: counted once.
    let i = next();
    let (name, album, _, _) = vote(i);
    let mine = json!({"name": name, "album": album, "year": 1997, "rank": 9.5, "vote_id": "wasm-phone-1"});
    for path in ["/wasm/votes", "/wasm/rust/send_data"] {
        let (status, reply) = front.post(path, &mine).await;
        assert_eq!(accepted_id(status, &reply), "wasm-phone-1");
    }
    expected.add("wasm-phone-1", i, "wasm");
    // Batches, in both shapes.
    let batch: Vec<usize> = (0..9).map(|_| next()).collect();
    let votes: Vec<Value> = batch.iter().map(|&i| json_vote(i)).collect();
    let (status, reply) = front.post("/wasm/votes/batch", &json!({ "votes": votes })).await;
    assert_eq!((status, reply["accepted"].as_u64()), (200, Some(9)), "{reply}");
    for (&i, id) in batch.iter().zip(reply["vote_ids"].as_array().expect("batch ids")) {
        expected.add(id.as_str().expect("id"), i, "wasm");
    }
    let batch: Vec<usize> = (0..3).map(|_| next()).collect();
    let votes: Vec<Value> = batch.iter().map(|&i| json_vote(i)).collect();
    let (status, reply) = front.post("/votes/batch", &json!(votes)).await;
    assert_eq!(status, 200, "{reply}");
    for (&i, id) in batch.iter().zip(reply["vote_ids"].as_array().expect("batch ids")) {
        expected.add(id.as_str().expect("id"), i, "wasm");
    }

    let logged = counted_once_as_wasm(&pipeline, &expected).await;
    let rank = logged["wasm-phone-1"].rank;
    assert_eq!(rank, 9.5, "the rank crosses both halves unchanged");

    drop(front);
    producer.stop().await;
    consumer.stop().await;
    pipeline.finish().await;
}

/// Waits until `expected` is counted and logged, then checks that it is, exactly, and nothing
/// more a second later, every vote logged as route `wasm`; the log.
async fn counted_once_as_wasm(pipeline: &Pipeline, expected: &Expected) -> BTreeMap<String, LogDocument> {
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(30)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tallies_after = bandvote_testkit::read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(tallies, tallies_after, "nothing counted late");
    expected.check(&tallies, &logged);
    for (id, document) in &logged {
        assert_eq!(document.route, Route::Wasm, "vote {id} is logged as route wasm: {document:?}");
    }
    logged
}

/// The embedded shape (`WASM_COMPONENT`): one ingest runs the checker component on each body and
/// casts the votes it returns. Its answers to bad input are compared with the native route's in
/// ingest's unit tests (`wasm_host`); here, that what it accepts is counted and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_wasm_route_counts_each_vote_once_as_route_wasm() {
    let pipeline = Pipeline::start("wasm-embedded").await;
    let consumer = pipeline.consume_in_process().await;
    let checker = format!("--wasm-component={}", bandvote_testkit::wasm_checker().display());
    let host = Native::start(&pipeline.services, &pipeline.topic, "wasm", &[&checker]).await;
    let client = reqwest::Client::new();
    let post = |path: &'static str, body: Value| post_raw(&client, &host.url, path, body.to_string());

    let mut expected = Expected::default();
    let mut n = 300;
    for path in ["/wasm/votes", "/wasm/rust/send_data", "/wasm/rust", "/wasm/insert", "/wasm"] {
        n += 1;
        let (status, reply) = post(path, json_vote(n)).await;
        expected.add(&accepted_id(status, &reply), n, "wasm");
    }
    // The client's own vote id, sent twice: counted once.
    n += 1;
    let (name, album, _, _) = vote(n);
    let mine = json!({"name": name, "album": album, "year": 1997, "rank": 9.5, "vote_id": "wasm-embedded-1"});
    for _ in 0..2 {
        let (status, reply) = post("/wasm/votes", mine.clone()).await;
        assert_eq!(accepted_id(status, &reply), "wasm-embedded-1");
    }
    expected.add("wasm-embedded-1", n, "wasm");
    let batch: Vec<usize> = (n + 1..n + 10).collect();
    let votes: Vec<Value> = batch.iter().map(|&i| json_vote(i)).collect();
    let (status, reply) = post("/wasm/votes/batch", json!({ "votes": votes })).await;
    assert_eq!((status, reply["accepted"].as_u64()), (200, Some(9)), "{reply}");
    for (&i, id) in batch.iter().zip(reply["vote_ids"].as_array().expect("batch ids")) {
        expected.add(id.as_str().expect("id"), i, "wasm");
    }
    let (status, reply) = post("/wasm/votes", json!({"name": "A"})).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("invalid_vote")), "{reply}");

    let logged = counted_once_as_wasm(&pipeline, &expected).await;
    assert_eq!(logged["wasm-embedded-1"].rank, 9.5, "the rank crosses the sandbox unchanged");

    host.stop().await;
    consumer.stop().await;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wasm_route_refuses_bad_input_exactly_like_the_native_route() {
    let bands: Vec<Value> = BANDS.iter().map(|(name, albums)| json!({"name": name, "albums": albums})).collect();
    let roster = std::env::temp_dir().join(format!("{}.json", unique("roster")));
    std::fs::write(&roster, json!({ "bands": bands }).to_string()).expect("roster written");
    let roster_arg = format!("--roster-file={}", roster.display());
    let limits = [roster_arg.as_str(), "--max-body-bytes=4096", "--max-batch-votes=10"];
    let services = Services::local();
    let topic = format!("votes-{}", unique("wasm-refusals"));
    // The native HTTP route to compare with, and the Wasm route's producer, with the same settings.
    let native = Native::start(&services, &topic, "http", &limits).await;
    let producer = Native::start(&services, &topic, "wasm", &limits).await;
    let front = WasmFront::start(&producer, &[("MAX_BODY_BYTES", "4096"), ("MAX_BATCH_VOTES", "10")]).await;
    let client = reqwest::Client::new();

    let good = votes::good();
    let votes: Vec<Value> = vec![
        without("name"),
        without("rank"),
        with("album", json!("")),
        with("name", json!("   ")),
        with("name", json!(42)),
        with("year", json!(true)),
        with("album", json!("x".repeat(101))),
        with("name", json!("Alux Nahual\u{200b}")),
        with("album", json!("Con\u{202e}quista")),
        with("year", json!("nineteen")),
        with("year", json!(1997.5)),
        with("rank", json!("9,5")),
        with("rank", json!("-1")),
        with("rank", json!(101)),
        with("year", json!(1492)),
        with("vote_id", json!("has spaces")),
        with("voter_id", json!(7)),
        with("name", json!("Unknown Band")),
        with("album", json!("Mil palabras")),
        json!({"name": 1, "album": null, "year": "x", "rank": []}),
        json!(["not", "a", "vote"]),
        json!("a string"),
        json!(null),
    ];
    let mut bodies: Vec<(&str, &str, String)> =
        votes.iter().map(|vote| ("/votes", "/wasm/votes", vote.to_string())).collect();
    for raw in ["{\"name\": \"Alux", "", "not json", &format!("{{\"name\": \"{}\"}}", "a".repeat(5000))] {
        bodies.push(("/votes", "/wasm/votes", raw.to_owned()));
        bodies.push(("/votes/batch", "/wasm/votes/batch", raw.to_owned()));
    }
    for batch in [
        json!([good, without("year"), with("rank", json!("abc"))]),
        json!([good, with("name", json!("Nobody"))]),
        json!([good, 5, "x"]),
        json!(vec![good.clone(); 11]),
        json!({"ballots": []}),
        json!({"votes": "no"}),
        json!([]),
        json!(good),
    ] {
        bodies.push(("/votes/batch", "/wasm/votes/batch", batch.to_string()));
    }
    for (native_path, wasm_path, body) in &bodies {
        let native_reply = post_raw(&client, &native.url, native_path, body.clone()).await;
        let wasm_reply = front.post_raw(wasm_path, body.clone()).await;
        assert_ne!(native_reply.0, 200, "the native route refuses {body}");
        assert_eq!(wasm_reply, native_reply, "POST {wasm_path} answers {body} like POST {native_path}");
        if *native_path == "/votes" {
            let original_path = front.post_raw("/rust/send_data", body.clone()).await;
            assert_eq!(original_path, native_reply, "POST /rust/send_data on the Wasm route: {body}");
        }
    }
    // Paths and methods: JSON errors too.
    let wrong_method = client.get(format!("{}/votes", native.url)).send().await.expect("answers");
    let wrong_method = (wrong_method.status().as_u16(), wrong_method.json::<Value>().await.expect("JSON"));
    assert_eq!(front.get("/wasm/votes").await, wrong_method);
    let (status, reply) = front.post("/wasm/nowhere", &good).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{reply}");

    // Nothing refused reached Kafka.
    assert_eq!(read_topic(&services.kafka_brokers, &topic).len(), 0, "no refused vote is in Kafka");
    drop(front);
    producer.stop().await;
    native.stop().await;
    let _ = std::fs::remove_file(roster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wasm_route_answers_503_when_the_native_side_is_down() {
    let services = Services::local();
    let topic = format!("votes-{}", unique("wasm-down"));
    let producer = Native::start(&services, &topic, "wasm", &[]).await;
    let front = WasmFront::start(&producer, &[]).await;
    let (status, reply) = front.post("/wasm/votes", &json_vote(1)).await;
    let first = accepted_id(status, &reply);

    producer.stop().await;
    let (status, reply) = front.post("/wasm/votes", &json_vote(2)).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("unavailable")), "{reply}");
    let message = reply["error"]["message"].as_str().expect("a message");
    assert!(message.contains("did not answer"), "{message}");
    assert!(reply["error"]["vote_id"].as_str().is_some_and(|id| !id.is_empty()), "names the vote id: {reply}");
    let mut mine = json_vote(3);
    mine["vote_id"] = json!("retry-me-1");
    let (status, reply) = front.post("/rust/send_data", &mine).await;
    assert_eq!((status, reply["error"]["vote_id"].as_str()), (503, Some("retry-me-1")), "{reply}");
    let (status, reply) = front.post("/wasm/votes/batch", &json!([json_vote(4), mine])).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("unavailable")), "{reply}");
    assert_eq!(reply["error"]["accepted"], json!([]), "{reply}");
    assert_eq!(reply["error"]["failed"][1], json!({"index": 1, "vote_id": "retry-me-1"}), "{reply}");
    let (status, reply) = front.get("/readyz").await;
    assert_eq!((status, reply["status"].as_str()), (503, Some("unavailable")), "{reply}");
    assert!(reply["reason"].as_str().is_some_and(|r| r.contains("did not answer")), "{reply}");
    assert_eq!(front.get("/healthz").await.0, 200, "the component itself is alive");

    // A native ingest that does not serve the Wasm route is no success either.
    let http_only = Native::start(&services, &topic, "http", &[]).await;
    let misrouted = WasmFront::start(&http_only, &[]).await;
    let (status, reply) = misrouted.post("/wasm/votes", &json_vote(5)).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("unavailable")), "{reply}");
    assert!(reply["error"]["message"].as_str().is_some_and(|m| m.contains("INGEST_ROUTES=wasm")), "{reply}");

    // Kafka holds the one vote that was accepted, and none of the refused ones.
    let records = read_topic(&services.kafka_brokers, &topic);
    let keys: Vec<String> =
        records.into_iter().map(|(key, _)| String::from_utf8(key.expect("a key")).expect("utf-8")).collect();
    assert_eq!(keys, [first]);
    drop((front, misrouted));
    http_only.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wasm_route_limits_the_client_the_load_balancer_saw() {
    let services = Services::local();
    let topic = format!("votes-{}", unique("wasm-rate"));
    // As in the pod: Google's load balancer in front of the component appends two addresses.
    let limits = ["--rate-limit-per-client=0.01", "--rate-limit-burst=3", "--trusted-proxies=2"];
    let producer = Native::start(&services, &topic, "wasm", &limits).await;
    let front = WasmFront::start(&producer, &[]).await;
    let client = reqwest::Client::new();
    let send = |path: &'static str, body: Value, forwarded_for: String| {
        let request = client.post(format!("{}{path}", front.url)).header("x-forwarded-for", forwarded_for);
        async move {
            let response = request.json(&body).send().await.expect("the component answers");
            let retry = response.headers().get("retry-after").map(|v| v.to_str().expect("ASCII").to_owned());
            (response.status().as_u16(), retry, response.json::<Value>().await.expect("JSON"))
        }
    };
    // The client writes a new first address each time; the balancer appends the one it saw.
    let mut answers = Vec::new();
    for n in 0..4 {
        answers.push(send("/wasm/votes", json_vote(n), format!("1.2.3.{n}, 203.0.113.7,34.120.0.1")).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, ..)| *status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{answers:?}");
    let (_, retry, refused) = &answers[3];
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert_eq!(retry.as_deref(), Some("100"), "the native side's Retry-After (a token per 100 s) is passed on");
    // A batch costs a token per vote: another client's batch of 3 spends its whole burst.
    let other = || "203.0.113.8,34.120.0.1".to_owned();
    let (status, _, reply) =
        send("/wasm/votes/batch", json!([json_vote(10), json_vote(11), json_vote(12)]), other()).await;
    assert_eq!(status, 200, "{reply}");
    let (status, _, reply) = send("/wasm/votes", json_vote(13), other()).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (429, Some("rate_limited")), "{reply}");

    assert_eq!(read_topic(&services.kafka_brokers, &topic).len(), 3 + 3, "only accepted votes reach Kafka");
    drop(front);
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wasm_route_refuses_votes_outside_the_voting_window() {
    let pipeline = Pipeline::start("wasm-closed").await;
    let contest = std::env::temp_dir().join(format!("{}.json", unique("wasm-contest")));
    // A window that has not opened yet.
    let contest_text = json!({"voting": {"opens": "2099-01-01T00:00:00Z", "closes": "2099-01-02T00:00:00Z"}});
    std::fs::write(&contest, contest_text.to_string()).expect("the contest file");
    let contest_arg = format!("--contest-file={}", contest.display());
    let producer = Native::start(&pipeline.services, &pipeline.topic, "wasm", &[&contest_arg]).await;
    let front = WasmFront::start(&producer, &[]).await;
    for path in ["/wasm/votes", "/rust/send_data"] {
        let (status, reply) = front.post(path, &json_vote(1)).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (403, Some("voting_closed")), "{path}: {reply}");
        assert_eq!(reply["error"]["opens"], "2099-01-01T00:00:00Z", "{reply}");
    }
    let (status, reply) = front.post("/wasm/votes/batch", &json!([json_vote(2), json_vote(3)])).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (403, Some("voting_closed")), "{reply}");
    assert!(read_topic(&pipeline.services.kafka_brokers, &pipeline.topic).is_empty(), "nothing reached Kafka");
    producer.stop().await;
    pipeline.finish().await;
}
