//! The routes under load, and one request to each.
//!
//! A [`Sender`] holds the clients (one HTTP/1.1 connection pool, one or more gRPC channels) and
//! the request bodies, built once so that the generator spends its time sending, not encoding.
//! [`Sender::send`] sends request number `n` and sorts the answer into ok or a named error.

use std::time::Duration;

use anyhow::Context as _;
use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::vote;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// The votes cycle through [`bandvote_testkit::BANDS`] and five ranks; 40 covers every pairing.
const BODIES: usize = 40;

/// One route of ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `POST /votes`, one vote.
    HttpVote,
    /// `POST /rust/send_data`, the original path, one vote.
    RustSendData,
    /// `POST /votes/batch`, `--batch` votes in one JSON array.
    HttpBatch,
    /// `POST /grpc/insert`, one vote through the gRPC route's HTTP front.
    GrpcInsert,
    /// gRPC `bandvote.v1.Votes/Cast`, one vote.
    GrpcCast,
    /// gRPC `bandvote.v1.Votes/CastBatch`, a client stream of `--batch` votes.
    GrpcBatch,
    /// `POST /wasm/votes` on the Wasm front (`--wasm`), one vote.
    WasmVote,
}

impl Target {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::HttpVote => "http-vote",
            Target::RustSendData => "rust-send-data",
            Target::HttpBatch => "http-batch",
            Target::GrpcInsert => "grpc-insert",
            Target::GrpcCast => "grpc-cast",
            Target::GrpcBatch => "grpc-batch",
            Target::WasmVote => "wasm-vote",
        }
    }

    /// Votes in one request: `batch` for the batch routes, else one.
    pub fn votes_per_request(self, batch: usize) -> usize {
        match self {
            Target::HttpBatch | Target::GrpcBatch => batch,
            _ => 1,
        }
    }

    fn http_path(self) -> Option<&'static str> {
        match self {
            Target::HttpVote => Some("/votes"),
            Target::RustSendData => Some("/rust/send_data"),
            Target::HttpBatch => Some("/votes/batch"),
            Target::GrpcInsert => Some("/grpc/insert"),
            Target::WasmVote => Some("/wasm/votes"),
            Target::GrpcCast | Target::GrpcBatch => None,
        }
    }

    /// Whether the target speaks gRPC (HTTP/2) rather than HTTP/1.1 JSON.
    pub fn is_grpc(self) -> bool {
        self.http_path().is_none()
    }
}

/// Where ingest listens and how requests are shaped.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL of the HTTP port, such as `http://127.0.0.1:8080`.
    pub http: String,
    /// Base URL of the Wasm front, such as `http://127.0.0.1:8090`.
    pub wasm: String,
    /// URI of the gRPC port, such as `http://127.0.0.1:50051`.
    pub grpc: String,
    /// Votes per batch request.
    pub batch: usize,
    /// gRPC channels (HTTP/2 connections) to spread requests over.
    pub grpc_connections: usize,
    /// Longest wait for one answer; past it the request counts as the error `timeout`.
    pub timeout: Duration,
    /// Idle HTTP connections kept for reuse.
    pub http_pool: usize,
    /// Send the no-op header, so that an ingest started with `NOOP_ROUTES=true` answers without
    /// Kafka: the same server's route with the queue left out.
    pub noop: bool,
    /// Give every vote its own id and report accepted ones, for the end-to-end measurement.
    pub trace: Option<Trace>,
}

/// Votes with ids, reported when accepted: request `n` carries the vote id `<run>-<n>`, and every
/// `every`-th accepted one is sent to `accepted` with the time its answer arrived.
#[derive(Debug, Clone)]
pub struct Trace {
    pub run: String,
    pub every: u64,
    pub accepted: tokio::sync::mpsc::UnboundedSender<(String, std::time::Instant)>,
}

impl Trace {
    pub fn vote_id(&self, n: u64) -> String {
        format!("{}-{n}", self.run)
    }
}

/// What one request got back: `Ok` or the name of its error, such as `http 503 overloaded` or
/// `grpc Unavailable`.
pub type Outcome = Result<(), String>;

/// Sends requests of one target.
#[derive(Clone)]
pub struct Sender {
    target: Target,
    timeout: Duration,
    kind: Kind,
    trace: Option<Trace>,
}

#[derive(Clone)]
enum Kind {
    Http { client: reqwest::Client, url: String, bodies: Vec<Vec<u8>>, noop: bool },
    Grpc { clients: Vec<VotesClient<Channel>>, votes: Vec<Vec<Vote>>, noop: bool },
}

impl Sender {
    /// The clients and bodies for `target`. gRPC channels connect lazily, on the first request.
    pub fn new(target: Target, endpoints: &Endpoints) -> anyhow::Result<Self> {
        let per_request = target.votes_per_request(endpoints.batch).max(1);
        let kind = match target.http_path() {
            Some(path) => {
                let client = reqwest::Client::builder()
                    .http1_only()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(endpoints.http_pool)
                    .timeout(endpoints.timeout)
                    .build()
                    .context("building the HTTP client")?;
                let bodies = (0..BODIES)
                    .map(|n| {
                        let votes: Vec<_> = (0..per_request).map(|k| vote_json(n * per_request + k)).collect();
                        let body = if target == Target::HttpBatch {
                            serde_json::Value::Array(votes)
                        } else {
                            votes.into_iter().next().expect("one vote")
                        };
                        serde_json::to_vec(&body).expect("a vote encodes")
                    })
                    .collect();
                let base = if target == Target::WasmVote { &endpoints.wasm } else { &endpoints.http };
                let url = format!("{}{path}", base.trim_end_matches('/'));
                Kind::Http { client, url, bodies, noop: endpoints.noop }
            }
            None => {
                let endpoint = Channel::from_shared(endpoints.grpc.clone())
                    .with_context(|| format!("{:?} is not a gRPC URI", endpoints.grpc))?
                    .timeout(endpoints.timeout)
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true);
                let clients =
                    (0..endpoints.grpc_connections.max(1)).map(|_| VotesClient::new(endpoint.connect_lazy())).collect();
                let votes =
                    (0..BODIES).map(|n| (0..per_request).map(|k| vote_proto(n * per_request + k)).collect()).collect();
                Kind::Grpc { clients, votes, noop: endpoints.noop }
            }
        };
        if endpoints.trace.is_some() {
            anyhow::ensure!(per_request == 1, "{} carries batches; votes are traced one per request", target.name());
        }
        Ok(Sender { target, timeout: endpoints.timeout, kind, trace: endpoints.trace.clone() })
    }

    /// The target this sender loads.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Sends request number `n` and waits for its answer, at most the timeout.
    pub async fn send(&self, n: u64) -> Outcome {
        let index = (n % BODIES as u64) as usize;
        let outcome = match tokio::time::timeout(self.timeout, self.send_once(index, n)).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timeout".to_owned()),
        };
        if let Some(trace) = &self.trace
            && outcome.is_ok()
            && n.is_multiple_of(trace.every.max(1))
        {
            let _ = trace.accepted.send((trace.vote_id(n), std::time::Instant::now()));
        }
        outcome
    }

    async fn send_once(&self, index: usize, n: u64) -> Outcome {
        match &self.kind {
            Kind::Http { client, url, bodies, noop } => {
                let body = match &self.trace {
                    Some(trace) => with_vote_id(&bodies[index], &trace.vote_id(n)),
                    None => bodies[index].clone(),
                };
                let mut request = client.post(url).header("content-type", "application/json").body(body);
                if *noop {
                    request = request.header(NOOP_HEADER, "1");
                }
                let response = request.send().await.map_err(http_error)?;
                let status = response.status();
                // Reading the whole body lets the connection be used again.
                let body = response.bytes().await.map_err(http_error)?;
                if status.is_success() {
                    return Ok(());
                }
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|reply| reply["error"]["code"].as_str().map(str::to_owned));
                Err(match code {
                    Some(code) => format!("http {} {code}", status.as_u16()),
                    None => format!("http {}", status.as_u16()),
                })
            }
            Kind::Grpc { clients, votes, noop } => {
                let mut client = clients[(n % clients.len() as u64) as usize].clone();
                let answer = if self.target == Target::GrpcBatch {
                    client.cast_batch(grpc_request(futures::stream::iter(votes[index].clone()), *noop)).await.map(drop)
                } else {
                    let mut vote = votes[index][0].clone();
                    if let Some(trace) = &self.trace {
                        vote.vote_id = trace.vote_id(n);
                    }
                    client.cast(grpc_request(vote, *noop)).await.map(drop)
                };
                answer.map_err(|status| format!("grpc {:?}", status.code()))
            }
        }
    }
}

/// The header (gRPC metadata) that asks an ingest started with `NOOP_ROUTES=true` to answer
/// without Kafka.
pub use bandvote_domain::front::NOOP_HEADER;

fn grpc_request<T>(message: T, noop: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if noop {
        request.metadata_mut().insert(NOOP_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    }
    request
}

/// A one-vote JSON body with `"vote_id"` added in front.
fn with_vote_id(body: &[u8], vote_id: &str) -> Vec<u8> {
    let mut out = format!("{{\"vote_id\":{},", serde_json::Value::from(vote_id)).into_bytes();
    out.extend_from_slice(&body[1..]);
    out
}

fn http_error(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "http connect error".to_owned()
    } else {
        "http transport error".to_owned()
    }
}

fn vote_json(n: usize) -> serde_json::Value {
    let (name, album, year, rank) = vote(n);
    serde_json::json!({"name": name, "album": album, "year": year, "rank": rank})
}

fn vote_proto(n: usize) -> Vote {
    let (name, album, year, rank) = vote(n);
    Vote { name: name.into(), album: album.into(), year: year.into(), rank: rank.into(), ..Vote::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(batch: usize) -> Endpoints {
        Endpoints {
            http: "http://127.0.0.1:1/".into(),
            wasm: "http://127.0.0.1:3".into(),
            grpc: "http://127.0.0.1:2".into(),
            batch,
            grpc_connections: 2,
            timeout: Duration::from_secs(1),
            http_pool: 8,
            noop: false,
            trace: None,
        }
    }

    #[test]
    fn http_targets_send_their_paths_and_bodies() {
        let expected = [
            (Target::HttpVote, "/votes", 1),
            (Target::RustSendData, "/rust/send_data", 1),
            (Target::HttpBatch, "/votes/batch", 7),
            (Target::GrpcInsert, "/grpc/insert", 1),
        ];
        let wasm = Sender::new(Target::WasmVote, &endpoints(7)).expect("a sender");
        let Kind::Http { url, .. } = &wasm.kind else { panic!("the Wasm front speaks HTTP") };
        assert_eq!(url, "http://127.0.0.1:3/wasm/votes");
        for (target, path, votes) in expected {
            let sender = Sender::new(target, &endpoints(7)).expect("a sender");
            let Kind::Http { url, bodies, .. } = &sender.kind else { panic!("{target:?} is an HTTP target") };
            assert_eq!(url, &format!("http://127.0.0.1:1{path}"));
            assert_eq!(bodies.len(), BODIES);
            let body: serde_json::Value = serde_json::from_slice(&bodies[3]).expect("JSON");
            match body.as_array() {
                Some(batch) => assert_eq!(batch.len(), votes, "{target:?}"),
                None => assert_eq!(votes, 1, "{target:?}"),
            }
        }
    }

    #[test]
    fn traced_votes_carry_their_ids() {
        let body = with_vote_id(br#"{"name":"A","rank":"1"}"#, "run-7");
        let vote: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(vote, serde_json::json!({"vote_id": "run-7", "name": "A", "rank": "1"}));
        let (accepted, _) = tokio::sync::mpsc::unbounded_channel();
        let trace = Trace { run: "e2e".into(), every: 10, accepted };
        assert_eq!(trace.vote_id(42), "e2e-42");
        let batch = Sender::new(Target::HttpBatch, &Endpoints { trace: Some(trace), ..endpoints(5) });
        assert!(batch.is_err(), "batches are not traced");
    }

    #[tokio::test]
    async fn grpc_targets_carry_batch_votes() {
        let sender = Sender::new(Target::GrpcBatch, &endpoints(5)).expect("a sender");
        let Kind::Grpc { clients, votes, .. } = &sender.kind else { panic!("gRPC") };
        assert_eq!(clients.len(), 2);
        assert!(votes.iter().all(|batch| batch.len() == 5));
        let sender = Sender::new(Target::GrpcCast, &endpoints(5)).expect("a sender");
        let Kind::Grpc { votes, .. } = &sender.kind else { panic!("gRPC") };
        assert!(votes.iter().all(|one| one.len() == 1));
    }
}
