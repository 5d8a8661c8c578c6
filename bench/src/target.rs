//! The routes under load, and one request to each.
//!
//! A [`Sender`] holds the clients (one HTTP/1.1 connection pool, one or more gRPC channels) and
//! the request bodies, built once so that the generator spends its time sending, not encoding.
//! [`Sender::send`] sends request number `n` and sorts the answer into ok or a named error.

use std::time::Duration;

use anyhow::Context as _;
use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::vote;
use serde::Serialize;
use tonic::transport::Channel;

/// The votes cycle through [`bandvote_testkit::BANDS`] and five ranks; 40 covers every pairing.
const BODIES: usize = 40;

/// One route of ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
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
            Target::GrpcCast | Target::GrpcBatch => None,
        }
    }
}

/// Where ingest listens and how requests are shaped.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL of the HTTP port, such as `http://127.0.0.1:8080`.
    pub http: String,
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
}

#[derive(Clone)]
enum Kind {
    Http { client: reqwest::Client, url: String, bodies: Vec<Vec<u8>> },
    Grpc { clients: Vec<VotesClient<Channel>>, votes: Vec<Vec<Vote>> },
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
                Kind::Http { client, url: format!("{}{path}", endpoints.http.trim_end_matches('/')), bodies }
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
                Kind::Grpc { clients, votes }
            }
        };
        Ok(Sender { target, timeout: endpoints.timeout, kind })
    }

    /// The target this sender loads.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Sends request number `n` and waits for its answer, at most the timeout.
    pub async fn send(&self, n: u64) -> Outcome {
        let index = (n % BODIES as u64) as usize;
        match tokio::time::timeout(self.timeout, self.send_once(index, n)).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timeout".to_owned()),
        }
    }

    async fn send_once(&self, index: usize, n: u64) -> Outcome {
        match &self.kind {
            Kind::Http { client, url, bodies } => {
                let response = client.post(url).body(bodies[index].clone()).send().await.map_err(http_error)?;
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
            Kind::Grpc { clients, votes } => {
                let mut client = clients[(n % clients.len() as u64) as usize].clone();
                let answer = if self.target == Target::GrpcBatch {
                    client.cast_batch(futures::stream::iter(votes[index].clone())).await.map(drop)
                } else {
                    client.cast(votes[index][0].clone()).await.map(drop)
                };
                answer.map_err(|status| format!("grpc {:?}", status.code()))
            }
        }
    }
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
            grpc: "http://127.0.0.1:2".into(),
            batch,
            grpc_connections: 2,
            timeout: Duration::from_secs(1),
            http_pool: 8,
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

    #[tokio::test]
    async fn grpc_targets_carry_batch_votes() {
        let sender = Sender::new(Target::GrpcBatch, &endpoints(5)).expect("a sender");
        let Kind::Grpc { clients, votes } = &sender.kind else { panic!("gRPC") };
        assert_eq!(clients.len(), 2);
        assert!(votes.iter().all(|batch| batch.len() == 5));
        let sender = Sender::new(Target::GrpcCast, &endpoints(5)).expect("a sender");
        let Kind::Grpc { votes, .. } = &sender.kind else { panic!("gRPC") };
        assert!(votes.iter().all(|one| one.len() == 1));
    }
}
