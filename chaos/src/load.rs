//! The steady load: an offered rate that the run sets (and changes), half on `POST /votes`, half
//! on gRPC `Votes/Cast`. Every vote has its own `vote_id`; a refused vote is sent again with the
//! same id until it is accepted.
//!
//! The load is open: votes start at the rate whatever the answers to earlier ones, up to
//! [`MOST_IN_FLIGHT`] at once. One task per vote; HTTP over a pool of kept-alive connections and
//! gRPC over a few HTTP/2 channels, so that the pipeline, not this process, is what limits.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bandvote_consumer::audit::Counts;
use bandvote_domain::{RedisKeys, Route};
use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::{stack::Stack, vote};
use tokio::sync::Semaphore;

/// Votes being sent (or re-sent) at once, at most.
const MOST_IN_FLIGHT: u32 = 4000;
/// Latest accepted ids kept, to look a few up in the log.
const RECENT: usize = 8;
/// Pause before a refused vote is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// gRPC channels (one HTTP/2 connection each) the votes of that route take turns on.
const GRPC_CHANNELS: usize = 4;
/// How often the generator starts the votes that are due.
const TICK: Duration = Duration::from_millis(5);

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
    /// Votes started so far: the next vote's number.
    started: AtomicUsize,
    /// The numbers of the votes started and not answered yet (a refusal is no answer).
    unanswered: Mutex<BTreeSet<usize>>,
    /// Votes to start per second; 0 pauses the load.
    rate: AtomicU32,
    /// The ids of the latest accepted votes, newest last.
    recent: Mutex<VecDeque<String>>,
    stop_sending: AtomicBool,
    give_up: AtomicBool,
    in_flight: Arc<Semaphore>,
    /// Times the generator had to wait because [`MOST_IN_FLIGHT`] votes were waiting on answers.
    stalls: AtomicU64,
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

/// Where votes go: the HTTP route and the gRPC channels.
#[derive(Clone)]
struct Routes {
    http: reqwest::Client,
    votes_url: String,
    grpc: Vec<VotesClient<tonic::transport::Channel>>,
}

impl Load {
    /// Starts the load, paused: [`Load::set_rate`] sets it going.
    pub fn start(stack: &Stack) -> Self {
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            started: AtomicUsize::new(0),
            unanswered: Mutex::new(BTreeSet::new()),
            rate: AtomicU32::new(0),
            recent: Mutex::new(VecDeque::new()),
            stop_sending: AtomicBool::new(false),
            give_up: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(MOST_IN_FLIGHT as usize)),
            stalls: AtomicU64::new(0),
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        let grpc = (0..GRPC_CHANNELS)
            .map(|_| {
                let channel = tonic::transport::Channel::from_shared(stack.grpc_url.clone())
                    .expect("a gRPC URI")
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy();
                VotesClient::new(channel)
            })
            .collect();
        let routes = Routes { http, votes_url: format!("{}/votes", stack.http_url), grpc };
        let run = format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
        );
        let generator = tokio::spawn(generate(shared.clone(), routes, run));
        Load { shared, generator }
    }

    /// Offers `rate` votes per second from now on (0 pauses).
    pub fn set_rate(&self, rate: u32) {
        self.shared.rate.store(rate, Ordering::Relaxed);
    }

    /// Votes started so far; the next vote gets this number.
    pub fn started(&self) -> usize {
        self.shared.started.load(Ordering::Relaxed)
    }

    /// How many of the votes numbered in `votes` have been answered (accepted, nearly always).
    pub fn answered_of(&self, votes: Range<usize>) -> usize {
        let unanswered = self.shared.unanswered.lock().expect("unanswered").range(votes.clone()).count();
        votes.len() - unanswered
    }

    /// How many votes numbered below `n` still wait for an acceptance.
    pub fn unanswered_below(&self, n: usize) -> usize {
        self.shared.unanswered.lock().expect("unanswered").range(..n).count()
    }

    /// Times the load could not start a vote on time because [`MOST_IN_FLIGHT`] votes were waiting
    /// on answers.
    pub fn stalls(&self) -> u64 {
        self.shared.stalls.load(Ordering::Relaxed)
    }

    /// Votes accepted and refusing answers so far.
    pub fn progress(&self) -> (u64, u64) {
        (self.shared.accepted.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }

    /// The ids of the latest accepted votes, newest last.
    pub fn recent_ids(&self) -> Vec<String> {
        self.shared.recent.lock().expect("recent").iter().cloned().collect()
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

/// Starts the votes that are due at the current rate, each in its own task, until told to stop.
async fn generate(shared: Arc<Shared>, routes: Routes, run: String) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    // Votes due but not started yet; a fraction carries over to the next tick.
    let mut due = 0.0;
    while !shared.stop_sending.load(Ordering::Relaxed) {
        interval.tick().await;
        let now = Instant::now();
        let rate = shared.rate.load(Ordering::Relaxed);
        due = if rate == 0 { 0.0 } else { due + f64::from(rate) * (now - last).as_secs_f64() };
        last = now;
        while due >= 1.0 {
            let permit = match shared.in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    shared.stalls.fetch_add(1, Ordering::Relaxed);
                    let Ok(permit) = shared.in_flight.clone().acquire_owned().await else { return };
                    permit
                }
            };
            due -= 1.0;
            let n = shared.started.load(Ordering::Relaxed);
            shared.unanswered.lock().expect("unanswered").insert(n);
            shared.started.store(n + 1, Ordering::Relaxed);
            shared.ledger.lock().expect("ledger").sent += 1;
            let id = format!("chaos-{run}-{n}");
            let (shared, routes) = (shared.clone(), routes.clone());
            tokio::spawn(async move {
                send_until_accepted(&shared, n, id, &routes).await;
                shared.unanswered.lock().expect("unanswered").remove(&n);
                drop(permit);
            });
        }
    }
}

async fn send_until_accepted(shared: &Shared, n: usize, id: String, routes: &Routes) {
    let route = if n.is_multiple_of(2) { Route::Http } else { Route::Grpc };
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
                let mut grpc = routes.grpc[n / 2 % routes.grpc.len()].clone();
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
                match routes.http.post(&routes.votes_url).json(&body).send().await {
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
