//! The steady load: a fixed offered rate, half on `POST /votes`, half on gRPC `Votes/Cast`. Every
//! vote has its own `vote_id`; a refused vote is sent again with the same id until it is accepted.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bandvote_consumer::audit::Counts;
use bandvote_domain::{RedisKeys, Route};
use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::vote;
use tokio::sync::Semaphore;

use crate::stack::Stack;

/// Votes being sent (or re-sent) at once, at most.
const MOST_IN_FLIGHT: u32 = 2000;
/// Latest accepted ids kept: enough to cover every partition (the log store is too slow to count
/// in full while it is being written).
pub const RECENT: usize = 48;
/// Pause before a refused vote is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What the load sent and what it heard.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Distinct votes sent.
    pub sent: u64,
    /// Accepted votes: id → (vote number, route).
    pub accepted: BTreeMap<String, (usize, Route)>,
    /// Answers that refused a vote (each followed by a re-send).
    pub refused: u64,
    /// Votes still not accepted when the load gave up.
    pub pending: u64,
    /// Answers that were neither an acceptance nor a refusal.
    pub unexpected: Vec<String>,
}

impl Ledger {
    /// The tallies the accepted votes must give (seconds of acceptance are not known here).
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (n, route) in self.accepted.values() {
            let (band, album, _, rank) = vote(*n);
            let field = RedisKeys::album_field(band, album);
            counts.total += 1;
            *counts.bands.entry(band.to_owned()).or_default() += 1;
            *counts.albums.entry(field.clone()).or_default() += 1;
            *counts.routes.entry(route.as_str().to_owned()).or_default() += 1;
            *counts.rank_sums.entry(field).or_default() += rank.parse::<f64>().expect("test ranks are numbers");
        }
        counts
    }
}

struct Shared {
    ledger: Mutex<Ledger>,
    accepted: AtomicU64,
    refused: AtomicU64,
    last_accepted: Mutex<Option<Instant>>,
    /// The ids of the latest accepted votes, newest last.
    recent: Mutex<std::collections::VecDeque<String>>,
    stop_sending: AtomicBool,
    give_up: AtomicBool,
    in_flight: Arc<Semaphore>,
}

pub struct Load {
    shared: Arc<Shared>,
    generator: tokio::task::JoinHandle<()>,
}

enum Answer {
    Accepted,
    Refused,
    Unexpected(String),
}

impl Load {
    pub fn start(stack: &Stack, rate: u32) -> Self {
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_accepted: Mutex::new(None),
            recent: Mutex::new(std::collections::VecDeque::new()),
            stop_sending: AtomicBool::new(false),
            give_up: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(MOST_IN_FLIGHT as usize)),
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
        let votes_url = format!("{}/votes", stack.http_url);
        let channel = tonic::transport::Channel::from_shared(stack.grpc_url.clone())
            .expect("a gRPC URI")
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let grpc = VotesClient::new(channel);
        let run = format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
        );
        let generator = tokio::spawn({
            let shared = shared.clone();
            async move {
                let tick = Duration::from_millis(10);
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let started = Instant::now();
                let mut n = 0usize;
                while !shared.stop_sending.load(Ordering::Relaxed) {
                    interval.tick().await;
                    let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
                    while n < due {
                        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else { return };
                        shared.ledger.lock().expect("ledger").sent += 1;
                        let id = format!("chaos-{run}-{n}");
                        let route = if n.is_multiple_of(2) { Route::Http } else { Route::Grpc };
                        let (shared, http, grpc, url) = (shared.clone(), http.clone(), grpc.clone(), votes_url.clone());
                        tokio::spawn(async move {
                            send_until_accepted(&shared, n, id, route, &http, &url, grpc).await;
                            drop(permit);
                        });
                        n += 1;
                    }
                }
            }
        });
        Load { shared, generator }
    }

    /// Votes accepted and refusing answers so far.
    pub fn progress(&self) -> (u64, u64) {
        (self.shared.accepted.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }

    /// The ids of the latest accepted votes (at most [`RECENT`]).
    pub fn recent_ids(&self) -> Vec<String> {
        self.shared.recent.lock().expect("recent").iter().cloned().collect()
    }

    pub fn last_accepted_at(&self) -> Option<Instant> {
        *self.shared.last_accepted.lock().expect("clock")
    }

    /// Stops sending new votes, lets refused ones be re-sent for up to `within`, then gives up on
    /// the rest and returns the ledger.
    pub async fn finish(self, within: Duration) -> Ledger {
        self.shared.stop_sending.store(true, Ordering::Relaxed);
        let _ = self.generator.await;
        let all = MOST_IN_FLIGHT;
        if tokio::time::timeout(within, self.shared.in_flight.acquire_many(all)).await.is_err() {
            self.shared.give_up.store(true, Ordering::Relaxed);
            drop(self.shared.in_flight.acquire_many(all).await);
        }
        self.shared.ledger.lock().expect("ledger").clone()
    }
}

async fn send_until_accepted(
    shared: &Shared,
    n: usize,
    id: String,
    route: Route,
    http: &reqwest::Client,
    url: &str,
    mut grpc: VotesClient<tonic::transport::Channel>,
) {
    let (band, album, year, rank) = vote(n);
    loop {
        let answer = match route {
            Route::Grpc => {
                let vote = Vote {
                    name: band.into(),
                    album: album.into(),
                    year: year.into(),
                    rank: rank.into(),
                    vote_id: id.clone(),
                    ..Vote::default()
                };
                match grpc.cast(vote).await {
                    Ok(reply) if reply.get_ref().vote_id == id => Answer::Accepted,
                    Ok(reply) => Answer::Unexpected(format!("gRPC accepted {id} as {}", reply.get_ref().vote_id)),
                    Err(status) => match status.code() {
                        tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown => Answer::Refused,
                        code => Answer::Unexpected(format!("gRPC {code:?}: {}", status.message())),
                    },
                }
            }
            _ => {
                let body = serde_json::json!({"name": band, "album": album, "year": year, "rank": rank, "vote_id": id});
                match http.post(url).json(&body).send().await {
                    Ok(response) => match response.status().as_u16() {
                        200 => Answer::Accepted,
                        429 | 503 => Answer::Refused,
                        status => {
                            Answer::Unexpected(format!("HTTP {status}: {}", response.text().await.unwrap_or_default()))
                        }
                    },
                    // No answer (connection refused or reset, timeout): refused as far as the client knows.
                    Err(_) => Answer::Refused,
                }
            }
        };
        match answer {
            Answer::Accepted => {
                let mut recent = shared.recent.lock().expect("recent");
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(id.clone());
                drop(recent);
                shared.ledger.lock().expect("ledger").accepted.insert(id, (n, route));
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                *shared.last_accepted.lock().expect("clock") = Some(Instant::now());
                return;
            }
            Answer::Refused => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                shared.ledger.lock().expect("ledger").refused += 1;
                if shared.give_up.load(Ordering::Relaxed) {
                    shared.ledger.lock().expect("ledger").pending += 1;
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Answer::Unexpected(what) => {
                shared.ledger.lock().expect("ledger").unexpected.push(format!("vote {id}: {what}"));
                return;
            }
        }
    }
}
