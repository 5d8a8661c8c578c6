//! The generator against small servers inside the test: an HTTP server that answers after 2 ms
//! and can stall every request for 300 ms during one 300 ms window, and a gRPC `Votes` server
//! that answers after 2 ms.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::Uri};
use bandvote_bench::{Config, Report, Step};
use bandvote_proto::v1::{
    CastBatchReply, CastReply, Vote,
    votes_server::{Votes, VotesServer},
};
use clap::Parser as _;
use tonic::{Request, Response, Status, Streaming};

const ANSWER_AFTER: Duration = Duration::from_millis(2);
const STALL: Duration = Duration::from_millis(300);

/// When the HTTP server stalls, relative to the first request it sees.
#[derive(Default)]
struct Server {
    first_request: OnceLock<Instant>,
    stall_from: Option<Duration>,
    /// The path and the number of votes of every request.
    seen: Mutex<Vec<(String, usize)>>,
}

async fn answer(State(server): State<Arc<Server>>, uri: Uri, body: Bytes) -> &'static str {
    let now = Instant::now();
    let since_first = now - *server.first_request.get_or_init(|| now);
    let stalled = server.stall_from.is_some_and(|from| since_first >= from && since_first < from + STALL);
    let votes = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(votes)) => votes.len(),
        Ok(_) => 1,
        Err(_) => 0,
    };
    server.seen.lock().unwrap().push((uri.path().to_owned(), votes));
    tokio::time::sleep(if stalled { STALL } else { ANSWER_AFTER }).await;
    r#"{"status":"accepted","vote_id":"test"}"#
}

async fn http_server(stall_from: Option<Duration>) -> (String, Arc<Server>) {
    let server = Arc::new(Server { stall_from, ..Server::default() });
    let app = axum::Router::new().fallback(answer).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), server)
}

#[derive(Default, Clone)]
struct GrpcServer {
    batch_sizes: Arc<Mutex<Vec<usize>>>,
}

#[tonic::async_trait]
impl Votes for GrpcServer {
    async fn cast(&self, _request: Request<Vote>) -> Result<Response<CastReply>, Status> {
        tokio::time::sleep(ANSWER_AFTER).await;
        Ok(Response::new(CastReply { vote_id: "test".into() }))
    }

    async fn cast_batch(&self, request: Request<Streaming<Vote>>) -> Result<Response<CastBatchReply>, Status> {
        let mut stream = request.into_inner();
        let mut votes = 0;
        while stream.message().await?.is_some() {
            votes += 1;
        }
        self.batch_sizes.lock().unwrap().push(votes);
        tokio::time::sleep(ANSWER_AFTER).await;
        Ok(Response::new(CastBatchReply { accepted: votes as u32, vote_ids: vec!["test".into(); votes] }))
    }
}

async fn grpc_server() -> (String, GrpcServer) {
    let service = GrpcServer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder().add_service(VotesServer::new(service.clone()));
    tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });
    (format!("http://{addr}"), service)
}

async fn bench(args: &[&str]) -> Report {
    let config = Config::parse_from(["bandvote-bench"].iter().chain(args));
    bandvote_bench::run(&config).await.expect("the bench runs")
}

fn only_step(report: &Report) -> &Step {
    assert_eq!(report.runs.len(), 1);
    assert_eq!(report.runs[0].steps.len(), 1);
    &report.runs[0].steps[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_server_is_offered_and_achieves_the_rate() {
    let (url, server) = http_server(None).await;
    let report = bench(&["--target=http-vote", "--http", &url, "--rate=500", "--duration=2s"]).await;
    let step = only_step(&report);
    println!("{}", report.markdown());

    assert_eq!(step.requests, 1000);
    assert_eq!(step.ok + step.error_total(), 1000, "every due request is answered or counted: {step:?}");
    assert_eq!(step.ok, 1000, "{:?}", step.errors);
    assert!(
        (step.achieved_per_s - 500.0).abs() <= 0.02 * 500.0,
        "achieved {:.1}/s, offered 500/s",
        step.achieved_per_s
    );
    let p50 = step.p50_ms.unwrap();
    assert!(p50 >= 2.0, "p50 {p50} ms is below the server's 2 ms");
    // One preflight request, then the measured ones.
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.len(), 1001);
    assert!(seen.iter().all(|(path, votes)| path == "/votes" && *votes == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_the_requests_due_during_it() {
    let (url, _server) = http_server(Some(Duration::from_millis(700))).await;
    let report = bench(&["--target=http-vote", "--http", &url, "--rate=500", "--duration=2s"]).await;
    let step = only_step(&report);
    println!("{}", report.markdown());

    assert_eq!(step.requests, 1000);
    assert_eq!(step.ok + step.error_total(), 1000, "every due request is answered or counted: {step:?}");
    assert_eq!(step.ok, 1000, "{:?}", step.errors);
    // About 150 of the 1000 requests were due in the 300 ms stall and waited about 300 ms.
    let p99 = step.p99_ms.unwrap();
    assert!(p99 >= 250.0, "p99 {p99} ms hides the 300 ms stall");
    assert!(step.p50_ms.unwrap() < 100.0, "only the stall is slow: {step:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_sends_its_request() {
    let (url, server) = http_server(None).await;
    let (grpc_url, grpc) = grpc_server().await;
    let report = bench(&[
        "--target=rust-send-data,http-batch,grpc-insert,grpc-cast,grpc-batch",
        "--http",
        &url,
        "--grpc",
        &grpc_url,
        "--batch=7",
        "--rate=100",
        "--duration=1s",
        "--grpc-connections=2",
        "--pause=100ms",
    ])
    .await;
    println!("{}", report.markdown());

    let targets: Vec<_> = report.runs.iter().map(|run| run.target.as_str()).collect();
    assert_eq!(targets, ["rust-send-data", "http-batch", "grpc-insert", "grpc-cast", "grpc-batch"]);
    for step in report.runs.iter().flat_map(|run| &run.steps) {
        assert_eq!((step.requests, step.ok), (100, 100), "{step:?}");
        let votes = if step.target.ends_with("batch") { 7 } else { 1 };
        assert_eq!(step.votes_per_request, votes);
        assert!((step.votes_per_s - step.achieved_per_s * votes as f64).abs() < 1e-6);
    }
    // Each target's preflight request, then its 100.
    let seen = server.seen.lock().unwrap();
    for (path, votes) in [("/rust/send_data", 1), ("/votes/batch", 7), ("/grpc/insert", 1)] {
        let requests: Vec<_> = seen.iter().filter(|(seen_path, _)| seen_path == path).collect();
        assert_eq!(requests.len(), 101, "{path}");
        assert!(requests.iter().all(|(_, seen_votes)| *seen_votes == votes), "{path}");
    }
    let batches = grpc.batch_sizes.lock().unwrap();
    assert_eq!(batches.len(), 101);
    assert!(batches.iter().all(|&votes| votes == 7));

    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["runs"][4]["steps"][0]["target"], "grpc-batch");
    assert_eq!(json["runs"][4]["steps"][0]["ok"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_search_measures_real_steps_and_the_cap_makes_late_starts() {
    // With one request out at a time and 2 ms per answer, 2000/s cannot be served: the capped
    // requests start late, still timed from their due times; two steps at the geometric middle of
    // the highest rate that passed and the lowest that failed refine the capacity.
    let (url, _server) = http_server(None).await;
    let report = bench(&[
        "--target=http-vote",
        "--http",
        &url,
        "--phase=capacity",
        "--start-rate=100",
        "--factor=20",
        "--step=500ms",
        "--max-outstanding=1",
        "--p99-bound=50ms",
        "--pause=100ms",
    ])
    .await;
    println!("{}", report.markdown());
    let run = &report.runs[0];
    let offered: Vec<_> = run.steps.iter().map(|step| step.offered_per_s).collect();
    assert_eq!(offered[..3], [100.0, 2000.0, 447.0], "√(100·2000) after the failed step");
    assert_eq!(offered.len(), 2 + bandvote_bench::capacity::REFINE);
    let highest_passed = run.steps.iter().filter(|step| step.passed == Some(true)).map(|step| step.offered_per_s);
    assert_eq!(run.capacity_per_s, highest_passed.reduce(f64::max));
    assert!(run.capacity_per_s.is_some_and(|rate| (100.0..2000.0).contains(&rate)), "{run:?}");
    let overloaded = &run.steps[1];
    assert_eq!(overloaded.passed, Some(false));
    assert!(overloaded.late_starts > 500, "{overloaded:?}");
    assert!(overloaded.p99_ms.unwrap() > 50.0, "{overloaded:?}");
    assert_eq!(overloaded.ok + overloaded.error_total(), 1000);
}
