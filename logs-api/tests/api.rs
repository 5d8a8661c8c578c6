//! The logs API against the real local MongoDB-protocol server, fed by the real pipeline: votes go
//! in through ingest, Kafka and the consumer, and come out of the API. The tests of time ranges
//! the pipeline cannot produce (votes hours and days old) write the consumer's documents directly,
//! through its `LogStore`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use bandvote_consumer::log_store::{self, KafkaVote, LogStore};
use bandvote_domain::{Ballot, LogDocument, MongoNames, Refused, Route, VoteEvent, VoteId};
use bandvote_logs_api::store::MAX_TALLY_GROUPS;
use bandvote_testkit::{Services, VoteLog, read_tallies, unique, vote, wait_for};
use clap::Parser;
use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One test's pipeline (ingest, consumer, logs API, all in this process) on its own topic, Redis
/// prefix and MongoDB database.
struct Stack {
    services: Services,
    prefix: String,
    database: String,
    ingest: SocketAddr,
    api: SocketAddr,
    stop: CancellationToken,
    client: reqwest::Client,
}

impl Stack {
    async fn start(name: &str) -> Self {
        let id = unique(name);
        let services = Services::local();
        let (topic, prefix, database) =
            (format!("votes-{id}"), format!("test-{id}"), format!("t{}", id.replace('-', "_")));
        let stop = CancellationToken::new();

        let ingest =
            bandvote_ingest::Ingest::build(bandvote_ingest::Config::parse_from(services.ingest_args(&topic, &[])))
                .await
                .expect("ingest starts");
        let ingest_addr = ingest.http_addr();
        tokio::spawn(ingest.run_until_stopped(stop.clone()));

        let consumer = bandvote_consumer::Config::parse_from([
            "bandvote-consumer".to_owned(),
            "--port=0".into(),
            "--kafka-session-timeout=6s".into(),
            format!("--kafka-brokers={}", services.kafka_brokers),
            format!("--kafka-topic={topic}"),
            format!("--kafka-group=group-{id}"),
            format!("--redis-url={}", services.redis_url),
            format!("--redis-key-prefix={prefix}"),
            format!("--mongodb-uri={}", services.mongodb_uri),
            format!("--mongodb-database={database}"),
        ]);
        let consumer = bandvote_consumer::ConsumerService::build(consumer).await.expect("consumer starts");
        tokio::spawn(consumer.run_until_stopped(stop.clone()));

        let api = start_api(&services.mongodb_uri, &database, &stop, &[]).await;
        Stack { services, prefix, database, ingest: ingest_addr, api, stop, client: reqwest::Client::new() }
    }

    /// Casts a vote through ingest (`/votes` for the HTTP route, `/grpc/insert` for gRPC).
    async fn cast(&self, path: &str, n: usize, vote_id: &str) {
        let (band, album, year, rank) = vote(n);
        let body = json!({"name": band, "album": album, "year": year, "rank": rank, "vote_id": vote_id});
        let response =
            self.client.post(format!("http://{}{path}", self.ingest)).json(&body).send().await.expect("ingest answers");
        assert_eq!(response.status(), 200, "{path} accepted vote {vote_id}");
    }

    async fn logged(&self, expected: u64) {
        let log = VoteLog::open(&self.services.mongodb_uri, &self.database).await;
        wait_for(&format!("{expected} votes logged"), Duration::from_secs(60), || async {
            let count = log.count().await;
            if count >= expected { Ok(()) } else { Err(format!("{count} logged")) }
        })
        .await;
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        get(&self.client, self.api, path_and_query).await
    }

    async fn finish(self) {
        self.stop.cancel();
        VoteLog::open(&self.services.mongodb_uri, &self.database).await.drop_database().await;
        bandvote_testkit::clear_redis(&self.services.redis_url, &self.prefix).await;
    }
}

/// Starts the logs API on `database`, tallies refreshed every 200 ms unless `extra` says otherwise.
async fn start_api(mongodb_uri: &str, database: &str, stop: &CancellationToken, extra: &[&str]) -> SocketAddr {
    let mut args = vec![
        "bandvote-logs-api".to_owned(),
        "--port=0".into(),
        "--query-timeout=2s".into(),
        format!("--mongodb-uri={mongodb_uri}"),
        format!("--mongodb-database={database}"),
    ];
    if !extra.iter().any(|arg| arg.starts_with("--tally-cache=")) {
        args.push("--tally-cache=200ms".into());
    }
    // Votes settle soon, so that the tallies' kept groups grow while a test runs.
    if !extra.iter().any(|arg| arg.starts_with("--tally-settle=")) {
        args.push("--tally-settle=300ms".into());
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let config = bandvote_logs_api::Config::parse_from(args);
    let api = bandvote_logs_api::LogsApi::build(config).await.expect("the logs API starts");
    let addr = api.addr();
    tokio::spawn(api.run_until_stopped(stop.clone()));
    addr
}

async fn get(client: &reqwest::Client, api: SocketAddr, path_and_query: &str) -> (u16, Value) {
    let response = client
        .get(format!("http://{api}{path_and_query}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the logs API answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or_else(|e| panic!("GET {path_and_query} answered non-JSON: {e}"));
    (status, body)
}

fn ids(page: &Value) -> Vec<String> {
    page["votes"].as_array().expect("votes array").iter().map(|v| v["vote_id"].as_str().unwrap().to_owned()).collect()
}

/// The `n`-th vote id of a test; zero-padded so that ids sort like the order they were sent in.
fn vote_id(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:04}")
}

/// Asserts an error answer: status, code, and which parameter the message names.
fn assert_error(answer: &(u16, Value), status: u16, code: &str, parameter: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let error = &answer.1["error"];
    assert_eq!(error["code"], code, "{}", answer.1);
    assert_eq!(error["parameter"], parameter, "{}", answer.1);
    let message = error["message"].as_str().expect("a message");
    assert!(message.starts_with(&format!("{parameter}: ")), "the message names the parameter: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_votes_filters_tallies_and_errors() {
    let stack = Stack::start("logs-api").await;
    // 45 votes sent one after another, the last 9 through the gRPC route's HTTP front.
    let sent = 45;
    for n in 0..sent {
        let path = if n >= 36 { "/grpc/insert" } else { "/votes" };
        stack.cast(path, n, &vote_id("a", n)).await;
    }
    stack.logged(sent as u64).await;
    let newest_first: Vec<String> = (0..sent).rev().map(|n| vote_id("a", n)).collect();

    // The default page: the latest 20, newest first, with a cursor to the rest.
    let (status, page) = stack.get("/votes").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), newest_first[..20]);
    assert!(page["next_cursor"].is_string(), "{page}");
    let newest = &page["votes"][0];
    let (band, album, _, _) = vote(sent - 1);
    assert_eq!((newest["name"].as_str(), newest["album"].as_str()), (Some(band), Some(album)));
    assert_eq!((newest["year"].as_i64(), newest["route"].as_str()), (Some(1997), Some("grpc")));
    assert!(newest["received_at"].as_str().unwrap().ends_with('Z'), "{newest}");
    assert!(newest["kafka"]["offset"].as_i64().unwrap() >= 0, "{newest}");

    // Everything at once, and the maximum enforced.
    let (_, all) = stack.get("/votes?limit=100").await;
    assert_eq!(ids(&all), newest_first);
    assert!(all["next_cursor"].is_null(), "the last page has no cursor: {all}");
    assert_error(&stack.get("/votes?limit=101").await, 400, "invalid_parameter", "limit");

    // One vote by id, and one that is not there.
    let (status, one) = stack.get(&format!("/votes/{}", vote_id("a", 3))).await;
    assert_eq!((status, &one), (200, &all["votes"][sent - 4]));
    let (status, missing) = stack.get("/votes/no-such-vote").await;
    assert_eq!((status, missing["error"]["code"].as_str()), (404, Some("not_found")), "{missing}");
    assert_error(&stack.get("/votes/bad%20id").await, 400, "invalid_parameter", "vote_id");

    // Each filter narrows to exactly the matching votes, newest first.
    for (query, matches) in [
        ("band=Alux%20Nahual", Box::new(|n: usize| vote(n).0 == "Alux Nahual") as Box<dyn Fn(usize) -> bool>),
        ("band=Alux%20Nahual&album=Conquista", Box::new(|n| vote(n).0 == "Alux Nahual" && vote(n).1 == "Conquista")),
        ("route=grpc", Box::new(|n| n >= 36)),
        ("route=http&band=Viernes%20Verde", Box::new(|n| n < 36 && vote(n).0 == "Viernes Verde")),
    ] {
        let expected: Vec<String> = (0..sent).rev().filter(|n| matches(*n)).map(|n| vote_id("a", n)).collect();
        assert!(!expected.is_empty(), "{query} matches some votes");
        let (status, page) = stack.get(&format!("/votes?limit=100&{query}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(ids(&page), expected, "{query}");
    }
    let (_, none) = stack.get("/votes?band=%7B%22%24ne%22%3A%22%22%7D").await;
    assert_eq!(ids(&none), Vec::<String>::new(), "an operator in a parameter is only a name: {none}");

    // Tallies from the log equal what was sent, and what Redis counted.
    let mut bands: BTreeMap<&str, u64> = BTreeMap::new();
    let mut albums: BTreeMap<(&str, &str), (u64, f64)> = BTreeMap::new();
    for n in 0..sent {
        let (band, album, _, rank) = vote(n);
        *bands.entry(band).or_default() += 1;
        let entry = albums.entry((band, album)).or_default();
        entry.0 += 1;
        entry.1 += rank.parse::<f64>().unwrap();
    }
    // Computed in the background: the last votes are in within an interval or two.
    let tallies = wait_for("the tallies to count every vote", Duration::from_secs(10), || async {
        let (status, tallies) = stack.get("/tallies").await;
        if status == 200 && tallies["total"] == sent { Ok(tallies) } else { Err(format!("{status} {tallies}")) }
    })
    .await;
    assert!(tallies["as_of"].as_str().is_some_and(|at| at.ends_with('Z')), "{tallies}");
    let got_bands: BTreeMap<&str, u64> = tallies["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["votes"].as_u64().unwrap()))
        .collect();
    assert_eq!(got_bands, bands);
    let counts: Vec<u64> = tallies["bands"].as_array().unwrap().iter().map(|b| b["votes"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "most votes first: {counts:?}");
    for album in tallies["albums"].as_array().unwrap() {
        let key = (album["name"].as_str().unwrap(), album["album"].as_str().unwrap());
        let (votes, rank_sum) = albums[&key];
        assert_eq!(album["votes"].as_u64(), Some(votes), "{album}");
        assert!((album["rank_avg"].as_f64().unwrap() - rank_sum / votes as f64).abs() < 1e-9, "{album}");
    }
    assert_eq!(tallies["albums"].as_array().unwrap().len(), albums.len());
    assert_eq!(tallies["routes"], json!([{"route": "http", "votes": 36}, {"route": "grpc", "votes": 9}]));
    let redis = read_tallies(&stack.services.redis_url, &stack.prefix).await;
    assert_eq!(redis.total, sent as u64);
    assert_eq!(redis.by_band, got_bands.iter().map(|(b, v)| ((*b).to_owned(), *v)).collect());
    let (_, filtered) = stack.get("/tallies?band=Alux%20Nahual&route=http").await;
    let expected = (0..36).filter(|n| vote(*n).0 == "Alux Nahual").count();
    assert_eq!(filtered["total"], expected, "{filtered}");
    assert_eq!(filtered["bands"], json!([{"name": "Alux Nahual", "votes": expected}]));

    // Bad parameters: a clear JSON error naming the parameter, never a silently wider answer.
    assert_error(&stack.get("/votes?limit=0").await, 400, "invalid_parameter", "limit");
    assert_error(&stack.get("/votes?limit=abc").await, 400, "invalid_parameter", "limit");
    assert_error(&stack.get("/votes?bnad=Alux").await, 400, "invalid_parameter", "bnad");
    assert_error(&stack.get("/votes?route=ftp").await, 400, "invalid_parameter", "route");
    assert_error(&stack.get("/votes?album=Conquista").await, 400, "invalid_parameter", "album");
    assert_error(&stack.get("/votes?band=").await, 400, "invalid_parameter", "band");
    assert_error(&stack.get("/votes?cursor=forged").await, 400, "invalid_parameter", "cursor");
    assert_error(&stack.get("/votes?band=a&band=b").await, 400, "invalid_parameter", "band");
    assert_error(&stack.get("/tallies?limit=5").await, 400, "invalid_parameter", "limit");
    let (status, body) = stack.get("/nowhere").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let response = stack.client.post(format!("http://{}/votes", stack.api)).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.expect("405 is JSON too");
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // The OpenAPI document it serves describes what it answers.
    let (status, openapi) = stack.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(openapi["openapi"], "3.1.0");
    let schemas = &openapi["components"]["schemas"];
    conforms(&page, &schemas["VotePage"], schemas);
    conforms(&all, &schemas["VotePage"], schemas);
    conforms(&one, &schemas["LoggedVote"], schemas);
    conforms(&tallies, &schemas["LogTallies"], schemas);
    conforms(&missing, &schemas["Error"], schemas);
    let documented: BTreeSet<&str> = openapi["paths"]["/votes"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(documented, BTreeSet::from(["limit", "cursor", "band", "album", "route"]));

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_have_no_gaps_or_repeats_while_votes_arrive() {
    let stack = Stack::start("logs-pages").await;
    let before = 60;
    for n in 0..before {
        stack.cast("/votes", n, &vote_id("p", n)).await;
    }
    stack.logged(before as u64).await;

    // Page through 7 at a time while new votes keep arriving between pages.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut arrived = 0;
    for page_number in 0.. {
        assert!(page_number < 20, "paging ends");
        let query = match &cursor {
            Some(cursor) => format!("/votes?limit=7&cursor={cursor}"),
            None => "/votes?limit=7".to_owned(),
        };
        let (status, page) = stack.get(&query).await;
        assert_eq!(status, 200, "{page}");
        let ids = ids(&page);
        assert!(ids.len() <= 7);
        seen.extend(ids);
        for _ in 0..3 {
            stack.cast("/votes", before + arrived, &vote_id("q", arrived)).await;
            arrived += 1;
        }
        stack.logged((before + arrived) as u64).await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..before).rev().map(|n| vote_id("p", n)).collect();
    assert_eq!(seen, expected, "every vote that was there once, newest first, none twice or missing");

    // The newest page now starts with the votes that arrived meanwhile.
    let (_, latest) = stack.get("/votes?limit=3").await;
    assert_eq!(ids(&latest), (arrived - 3..arrived).rev().map(|n| vote_id("q", n)).collect::<Vec<_>>());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_say_whether_mongodb_answers() {
    let services = Services::local();
    let stop = CancellationToken::new();
    let client = reqwest::Client::new();
    let up = start_api(&services.mongodb_uri, &unique("ready"), &stop, &[]).await;
    assert_eq!(get(&client, up, "/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(get(&client, up, "/readyz").await, (200, json!({"status": "ready"})));
    let (status, empty) = get(&client, up, "/votes").await;
    assert_eq!((status, empty), (200, json!({"votes": [], "next_cursor": null})), "an empty log is an empty page");

    // Nothing listens on this port: alive, not ready, and queries answer 503 within the timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = start_api(&format!("mongodb://{closed}"), "bandvote", &stop, &["--tally-wait=300ms"]).await;
    assert_eq!(get(&client, down, "/healthz").await.0, 200);
    let (status, body) = get(&client, down, "/readyz").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unavailable")), "{body}");
    let started = Instant::now();
    let (status, body) = get(&client, down, "/votes").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused within the query timeout");
    // Before the first computation has failed, a tally waits only as long as TALLY_WAIT, filtered
    // or not (a fresh instance: its first computation takes the whole query timeout to fail).
    let fresh = start_api(&format!("mongodb://{closed}"), "bandvote", &stop, &["--tally-wait=300ms"]).await;
    for path in ["/tallies?band=Alux%20Nahual", "/tallies"] {
        let started = Instant::now();
        let (status, body) = get(&client, fresh, path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("tally_pending")), "{path}: {body}");
        assert!(started.elapsed() < Duration::from_millis(1500), "answered within the wait: {:?}", started.elapsed());
    }
    // Once the computation failed, the failure is the answer, at once, for every filter.
    for path in ["/tallies", "/tallies?band=Alux%20Nahual", "/tallies?route=grpc"] {
        wait_for("the failure to be the answer", Duration::from_secs(10), || async {
            let started = Instant::now();
            let (status, body) = get(&client, fresh, path).await;
            let code = body["error"]["code"].as_str();
            if (status, code) == (503, Some("unavailable")) && started.elapsed() < Duration::from_millis(250) {
                Ok(())
            } else {
                Err(format!("{path}: {body} after {:?}", started.elapsed()))
            }
        })
        .await;
    }

    let metrics = client.get(format!("http://{up}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("bandvote_logs_api_query_seconds"), "{metrics}");
    stop.cancel();
}

/// A database of one test's own, filled directly with the consumer's documents (its `LogStore`,
/// indexes included) for times the pipeline cannot produce.
struct SeededLog {
    uri: String,
    database: String,
    store: LogStore,
    offset: i64,
}

impl SeededLog {
    async fn create(name: &str) -> Self {
        let uri = Services::local().mongodb_uri;
        let database = format!("t{}", unique(name).replace('-', "_"));
        let store = LogStore::connect(&uri, &MongoNames::new(&database)).await.expect("the log store connects");
        store.ensure_indexes().await.expect("the log's indexes");
        SeededLog { uri, database, store, offset: 0 }
    }

    /// Logs, for each (vote_id, n, received_at_ms), the `n`-th test vote; every 13th is refused
    /// when `refusing`.
    async fn log(&mut self, votes: impl IntoIterator<Item = (String, usize, i64)>, refusing: bool) {
        let ballots = votes.into_iter().map(|(vote_id, n, received_at_ms)| {
            let (band, album, year, rank) = vote(n);
            (vote_id, n, json!({"name": band, "album": album, "year": year, "rank": rank}), received_at_ms)
        });
        self.log_ballots(ballots, refusing).await;
    }

    /// Logs, for each (vote_id, n, ballot, received_at_ms), that ballot as the `n`-th vote.
    async fn log_ballots(&mut self, votes: impl IntoIterator<Item = (String, usize, Value, i64)>, refusing: bool) {
        let logged = self.votes(votes, refusing);
        let count = logged.len() as u64;
        assert_eq!(self.store.insert(&logged).await.expect("the votes are logged"), count);
    }

    /// The votes [`SeededLog::log_ballots`] would log.
    fn votes(
        &mut self,
        votes: impl IntoIterator<Item = (String, usize, Value, i64)>,
        refusing: bool,
    ) -> Vec<KafkaVote> {
        let mut logged = Vec::new();
        for (vote_id, n, ballot, received_at_ms) in votes {
            let ballot = Ballot::from_json(&ballot).expect("a valid ballot");
            self.offset += 1;
            logged.push(KafkaVote {
                event: VoteEvent {
                    vote_id: VoteId::parse(&vote_id).expect("a valid vote id"),
                    ballot,
                    route: if n % 3 == 0 { Route::Grpc } else { Route::Http },
                    received_at_ms,
                },
                partition: (n % 3) as i32,
                offset: self.offset,
                refused: (refusing && n % 13 == 0).then_some(Refused::LimitReached),
            });
        }
        logged
    }

    /// The vote ids of `filter`'s votes by the unbounded "newest first" sort, straight from the driver.
    async fn newest_first(&self, filter: Document) -> Vec<String> {
        let documents: Vec<LogDocument> = self
            .store
            .votes()
            .find(filter)
            .sort(doc! {"received_at": -1, "_id": -1})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("the votes");
        documents.into_iter().map(|d| d.vote_id.expect("a vote_id")).collect()
    }

    async fn drop(self) {
        VoteLog::open(&self.uri, &self.database).await.drop_database().await;
    }
}

fn now_ms() -> i64 {
    DateTime::now().timestamp_millis()
}

fn as_of(tallies: &Value) -> i64 {
    let text = tallies["as_of"].as_str().unwrap_or_else(|| panic!("tallies have an as_of: {tallies}"));
    DateTime::parse_rfc3339_str(text).unwrap_or_else(|e| panic!("as_of {text:?} is RFC 3339: {e}")).timestamp_millis()
}

/// Every page of `GET /votes?limit=..&..`, following `next_cursor`; every page but the last is full.
async fn page_through(client: &reqwest::Client, api: SocketAddr, limit: usize, filter: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        assert!(page_number < 1000, "paging ends");
        let path = match &cursor {
            Some(cursor) => format!("/votes?limit={limit}{filter}&cursor={cursor}"),
            None => format!("/votes?limit={limit}{filter}"),
        };
        let (status, page) = get(client, api, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let ids = ids(&page);
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(ids.len(), limit, "a page with a next one is full: {path}");
                cursor = Some(next.to_owned());
                seen.extend(ids);
            }
            None => {
                assert!(ids.len() <= limit, "{path}");
                seen.extend(ids);
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_through_votes_days_apart_like_an_unbounded_sort() {
    let mut log = SeededLog::create("logs-spread").await;
    let (second, minute, hour, day) = (1_000, 60_000, 3_600_000, 86_400_000);
    let now = now_ms();
    // Dense, then sparser and sparser: every page reads through more and wider windows, and the
    // oldest ones lie past the widest window (about 30 days).
    let mut received: Vec<i64> = (0..30).map(|i| now - i * 97).collect();
    received.extend([now - 25 * second; 8]); // one instant: a page boundary falls inside it
    received.extend((0..15).map(|i| now - minute - i * 233 * second));
    received.extend((0..12).map(|i| now - hour - i * 7_000 * second));
    received.extend((0..10).map(|i| now - (1 + i) * day));
    received.extend([now - 2 * day - 1; 4]);
    received.extend((0..5).map(|i| now - (40 + 40 * i) * day));
    received.extend([now + 2 * minute; 2]); // stamped by a clock ahead of the API's
    // Ids in another order than time, so that ties are broken by `_id`, not by insertion.
    let votes: Vec<(String, usize, i64)> =
        received.iter().enumerate().map(|(n, at)| (format!("w-{:04}", (n * 37) % 1000), n, *at)).collect();
    log.log(votes.clone(), true).await;

    let mut by_hand = votes.clone();
    by_hand.sort_by(|a, b| (b.2, &b.0).cmp(&(a.2, &a.0)));
    let expected = log.newest_first(doc! {}).await;
    assert_eq!(expected, by_hand.iter().map(|v| v.0.clone()).collect::<Vec<_>>(), "the driver's sort");

    let stop = CancellationToken::new();
    let api = start_api(&log.uri, &log.database, &stop, &[]).await;
    let client = reqwest::Client::new();
    for limit in [1, 7, 20, 100] {
        assert_eq!(page_through(&client, api, limit, "").await, expected, "limit={limit}");
    }
    for (filter, document) in [
        ("&band=Alux%20Nahual", doc! {"name": "Alux Nahual"}),
        ("&route=grpc", doc! {"route": "grpc"}),
        ("&band=Viernes%20Verde&route=http", doc! {"name": "Viernes Verde", "route": "http"}),
    ] {
        let expected = log.newest_first(document).await;
        assert!(expected.len() > 3, "{filter} matches votes far apart");
        for limit in [1, 3, 20] {
            assert_eq!(page_through(&client, api, limit, filter).await, expected, "limit={limit}{filter}");
        }
    }

    // A vote older than any the API has seen, logged late, is still read: a page's last query
    // has no lower bound.
    log.log([("w-ancient".to_owned(), 1, now - 400 * day), ("w-late".to_owned(), 2, now - 5 * second)], false).await;
    let expected = log.newest_first(doc! {}).await;
    assert_eq!(expected.last().map(String::as_str), Some("w-ancient"));
    assert_eq!(page_through(&client, api, 20, "").await, expected);

    stop.cancel();
    log.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tallies_are_answered_at_once_and_refreshed_in_the_background() {
    let mut log = SeededLog::create("logs-tallies").await;
    let now = now_ms();
    log.log((0..10).map(|n| (format!("t-{n:04}"), n, now - 1000 * n as i64)), false).await;
    let stop = CancellationToken::new();
    let interval = Duration::from_millis(500);
    let api = start_api(&log.uri, &log.database, &stop, &["--tally-cache=500ms", "--tally-wait=2s"]).await;
    let client = reqwest::Client::new();

    // The first answer waits for the first computation, then every answer is at once.
    let (status, first) = get(&client, api, "/tallies").await;
    assert_eq!((status, &first["total"]), (200, &json!(10)), "{first}");
    assert!((as_of(&first) - now_ms()).abs() < 10_000, "as of about now: {first}");

    log.log((10..15).map(|n| (format!("t-{n:04}"), n, now_ms())), false).await;
    let logged = Instant::now();
    let refreshed = wait_for("the tally to count the new votes", Duration::from_secs(10), || async {
        let asked = Instant::now();
        let (status, tallies) = get(&client, api, "/tallies").await;
        assert!(asked.elapsed() < interval, "answered without waiting for a query: {:?}", asked.elapsed());
        if status == 200 && tallies["total"] == 15 { Ok(tallies) } else { Err(format!("{status} {tallies}")) }
    })
    .await;
    assert!(logged.elapsed() < 4 * interval, "refreshed within a couple of intervals: {:?}", logged.elapsed());
    assert!(as_of(&refreshed) > as_of(&first), "{first} then {refreshed}");

    // Many readers at once: all answered from what the refresher computed.
    let asked = Instant::now();
    let answers = futures::future::join_all((0..40).map(|_| get(&client, api, "/tallies"))).await;
    assert!(answers.iter().all(|(status, tallies)| *status == 200 && tallies["total"] == 15));
    assert!(asked.elapsed() < Duration::from_secs(2), "40 answers in {:?}", asked.elapsed());

    // A filter asked for the first time is answered within TALLY_WAIT, then kept up to date too.
    let alux = |range: std::ops::Range<usize>| range.filter(|n| vote(*n).0 == "Alux Nahual").count();
    let asked = Instant::now();
    let (status, filtered) = get(&client, api, "/tallies?band=Alux%20Nahual").await;
    assert!(asked.elapsed() < Duration::from_millis(2500), "within the wait: {:?}", asked.elapsed());
    assert_eq!((status, &filtered["total"]), (200, &json!(alux(0..15))), "{filtered}");
    log.log((15..30).map(|n| (format!("t-{n:04}"), n, now_ms())), false).await;
    wait_for("the filtered tally to be refreshed", Duration::from_secs(10), || async {
        let (status, tallies) = get(&client, api, "/tallies?band=Alux%20Nahual").await;
        if status == 200 && tallies["total"] == alux(0..30) { Ok(()) } else { Err(format!("{status} {tallies}")) }
    })
    .await;

    let metrics = client.get(format!("http://{api}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["bandvote_logs_api_tally_age_seconds", "bandvote_logs_api_tally_refreshes_total"] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    stop.cancel();
    log.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vote_written_after_it_settled_is_counted_by_the_next_recount() {
    let mut log = SeededLog::create("logs-recount").await;
    let now = now_ms();
    log.log((0..10).map(|n| (format!("r-{n:04}"), n, now - n as i64)), false).await;
    let stop = CancellationToken::new();
    let api = start_api(&log.uri, &log.database, &stop, &["--tally-settle=1s", "--tally-recount=6s"]).await;
    let client = reqwest::Client::new();
    let (status, first) = get(&client, api, "/tallies").await;
    assert_eq!((status, &first["total"]), (200, &json!(10)), "{first}");

    // A write that ends a minute after its `logged_at`: the tally has long kept the groups of
    // that time, and reads only what was logged since.
    let (band, album, year, rank) = vote(3);
    let ballot = json!({"name": band, "album": album, "year": year, "rank": rank});
    let late = log.votes([("r-late".to_owned(), 3, ballot, now_ms())], false);
    let document = log_store::document(&late[0], DateTime::from_millis(now_ms() - 60_000));
    log.store.votes().insert_one(document).await.expect("the late vote is written");
    let written = now_ms();

    // Missed by the reading of what is new (the fault is the one meant) ...
    let missed = wait_for("a tally as of after the late write", Duration::from_secs(3), || async {
        let (status, tallies) = get(&client, api, "/tallies").await;
        if status == 200 && as_of(&tallies) > written { Ok(tallies) } else { Err(format!("{status} {tallies}")) }
    })
    .await;
    assert_eq!(missed["total"], 10, "the late vote is not in the new votes' range: {missed}");
    // ... and counted once the whole log is counted again.
    let recounted = wait_for("the recount to count the late vote", Duration::from_secs(20), || async {
        let (status, tallies) = get(&client, api, "/tallies").await;
        if status == 200 && tallies["total"] == 11 { Ok(tallies) } else { Err(format!("{status} {tallies}")) }
    })
    .await;
    let tallied = |tallies: &Value| {
        tallies["bands"].as_array().unwrap().iter().find(|b| b["name"] == band).unwrap()["votes"].clone()
    };
    assert_eq!(tallied(&recounted), json!(tallied(&first).as_u64().unwrap() + 1), "{first} then {recounted}");
    let metrics = client.get(format!("http://{api}/metrics")).send().await.unwrap().text().await.unwrap();
    let corrections = metrics.lines().find(|line| line.starts_with("bandvote_logs_api_tally_corrections_total"));
    assert_eq!(corrections.and_then(|line| line.split_whitespace().last()), Some("1"), "{metrics}");
    stop.cancel();
    log.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_with_too_many_groups_is_still_tallied_by_filter() {
    let mut log = SeededLog::create("logs-groups").await;
    let now = now_ms();
    let groups = MAX_TALLY_GROUPS + 1;
    let ballot = |band: String| json!({"name": band, "album": "Uno", "year": "1997", "rank": "8"});
    let ballots = (0..groups).map(|n| (format!("g-{n:05}"), n, ballot(format!("Banda {n:05}")), now - n as i64));
    log.log_ballots(ballots.collect::<Vec<_>>(), false).await;
    log.log_ballots((0..3).map(|n| (format!("g-alux-{n}"), n, ballot("Alux Nahual".into()), now)), false).await;
    let stop = CancellationToken::new();
    let api = start_api(&log.uri, &log.database, &stop, &["--tally-wait=10s"]).await;
    let client = reqwest::Client::new();

    let (status, whole) = get(&client, api, "/tallies").await;
    assert_eq!((status, whole["error"]["code"].as_str()), (422, Some("too_many_groups")), "{whole}");
    assert!(whole["error"]["message"].as_str().is_some_and(|m| m.contains("narrow")), "says what to do: {whole}");
    // Each filter then has its own query, whose groups fit.
    let (status, alux) = get(&client, api, "/tallies?band=Alux%20Nahual").await;
    assert_eq!((status, &alux["total"]), (200, &json!(3)), "{alux}");
    let (status, one) = get(&client, api, "/tallies?band=Banda%2000042&album=Uno").await;
    assert_eq!((status, &one["total"], &one["albums"][0]["rank_avg"]), (200, &json!(1), &json!(8.0)), "{one}");
    stop.cancel();
    log.drop().await;
}

/// Checks `value` against a JSON Schema subset (type, enum, required, properties,
/// additionalProperties: false, items, $ref) as the OpenAPI document uses it.
fn conforms(value: &Value, schema: &Value, schemas: &Value) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return conforms(value, &schemas[name], schemas);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let fits = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            other => panic!("unknown schema type {other}"),
        });
        assert!(fits, "{value} is not of type {types:?}");
    }
    if let Some(allowed) = schema["enum"].as_array() {
        assert!(allowed.contains(value), "{value} is not one of {allowed:?}");
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(object.contains_key(required.as_str().unwrap()), "{value} lacks {required}");
        }
        for (key, field) in object {
            match schema["properties"].get(key) {
                Some(property) => conforms(field, property, schemas),
                None => assert!(schema["additionalProperties"] != false, "{key} is not in the schema: {value}"),
            }
        }
    }
    if let (Some(items), Some(schema_items)) = (value.as_array(), schema.get("items")) {
        for item in items {
            conforms(item, schema_items, schemas);
        }
    }
}
