//! Admission: what keeps ingest answering under more load than it can take.
//!
//! * In flight: at most `MAX_IN_FLIGHT` vote requests at once, carrying at most
//!   `MAX_IN_FLIGHT_BYTES` of request bodies, over every route together. One more is refused at
//!   once with 503 `overloaded` / `RESOURCE_EXHAUSTED` instead of waiting in a queue. A request's
//!   working memory grows with its body (a batch of 1000 votes, 90 KB of JSON, takes a few MB
//!   parsed, checked and queued for Kafka), so the byte budget is what bounds memory.
//! * Per client (optional): a token bucket of `RATE_LIMIT_PER_CLIENT` votes per second with a
//!   burst of `RATE_LIMIT_BURST`. A request takes one token when it is admitted, and a batch one
//!   more for each further vote it holds ([`Budget`]), so a batch of n votes costs n tokens; a batch
//!   larger than the burst is refused whole. Over it: 429 `rate_limited` / `RESOURCE_EXHAUSTED`
//!   with `Retry-After`. The buckets of at most `MAX_TRACKED_CLIENTS` clients are kept.
//! * The client ([`ClientAddress`]): the peer address, or, behind `TRUSTED_PROXIES` proxies, the
//!   address the outermost of them saw: the `TRUSTED_PROXIES`-th `X-Forwarded-For` address from
//!   the right, since each proxy appends to what the client sent. An IPv4 client is keyed by its
//!   address, an IPv6 client by its /64 (one subscriber's prefix; an IPv4-mapped address is IPv4).
//!   A call to the gRPC server from this host's own HTTP front carries the client the front
//!   admitted ([`FRONT_CLIENT`]) and is not admitted again: the front's request holds its place in
//!   flight and its bytes until the call is answered, and its client was charged once.
//! * Time: every HTTP vote request ends within `REQUEST_TIMEOUT` (503 `timeout`); gRPC calls get
//!   the same deadline.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{
        HeaderValue,
        header::{CONTENT_LENGTH, RETRY_AFTER},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use bandvote_domain::reply::{ErrorCode, ErrorReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::reply::ApiError;

/// Buckets kept at most; past it, full buckets (clients quiet for a while) are dropped first.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The header (and gRPC metadata) to which proxies append the address they took a request from.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The gRPC metadata with which ingest's HTTP front (`/grpc/insert`) names the client it admitted
/// (and charged) a vote for. The gRPC server believes it only on a call from its own host: in
/// production the front and the server are one process in one pod, and nothing outside the pod's
/// network namespace can connect from a loopback address.
pub const FRONT_CLIENT: &str = "x-bandvote-front-client";

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// At the limit of `limit` (`what`: "requests" or "bytes of requests") in flight.
    Overloaded {
        what: &'static str,
        limit: usize,
    },
    RateLimited {
        retry_after: Duration,
    },
    /// A batch of more votes than a client's whole burst: it can never be admitted.
    OverBurst {
        burst: u64,
    },
}

impl Refusal {
    fn code(self) -> ErrorCode {
        match self {
            Refusal::Overloaded { .. } => ErrorCode::Overloaded,
            Refusal::RateLimited { .. } | Refusal::OverBurst { .. } => ErrorCode::RateLimited,
        }
    }

    pub fn reply(self) -> ErrorReply {
        let message = match self {
            Refusal::Overloaded { what, limit } => {
                format!("ingest is at its limit of {limit} {what} in flight; try again shortly")
            }
            Refusal::RateLimited { retry_after } => {
                format!("too many votes from this client; try again in {} s", retry_seconds(retry_after))
            }
            Refusal::OverBurst { burst } => format!(
                "this batch holds more votes than the {burst} one client may send at once (RATE_LIMIT_BURST); \
                 send smaller batches"
            ),
        };
        ErrorReply::new(self.code(), message)
    }

    /// The HTTP answer: the JSON error, with `Retry-After` when waiting helps.
    pub fn response(self) -> Response {
        let mut response = ApiError(self.reply()).into_response();
        if let Some(wait) = self.retry_after() {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_seconds(wait)));
        }
        response
    }

    pub fn status(self) -> tonic::Status {
        tonic::Status::new(tonic::Code::from(self.code().grpc()), self.reply().message)
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            Refusal::Overloaded { .. } => Some(Duration::from_secs(1)),
            Refusal::RateLimited { retry_after } => Some(retry_after),
            Refusal::OverBurst { .. } => None,
        }
    }
}

fn retry_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The limits of one ingest process, shared by every route.
#[derive(Clone)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    most_in_flight: usize,
    /// The byte budget, in KiB.
    body_kib: Arc<Semaphore>,
    most_body_kib: usize,
    rate: Option<Arc<RateLimiter>>,
    clients: ClientAddress,
    pub request_timeout: Duration,
    largest_body: usize,
}

impl Admission {
    /// `largest_body` is `MAX_BODY_BYTES`: a larger Content-Length is refused before admission, and
    /// a body without one is counted as this large.
    pub fn new(
        (most_in_flight, most_bytes, largest_body): (usize, usize, usize),
        per_client: Option<(f64, f64)>,
        clients: ClientAddress,
        request_timeout: Duration,
    ) -> Self {
        let most_body_kib = most_bytes.div_ceil(1024).max(1);
        Admission {
            in_flight: Arc::new(Semaphore::new(most_in_flight.max(1))),
            most_in_flight: most_in_flight.max(1),
            body_kib: Arc::new(Semaphore::new(most_body_kib)),
            most_body_kib,
            rate: per_client
                .filter(|(rate, _)| *rate > 0.0)
                .map(|(rate, burst)| Arc::new(RateLimiter::new(rate, burst))),
            clients,
            request_timeout,
            largest_body,
        }
    }

    /// Admits one request of about `bytes` from `client`, charging it one vote; it holds its place
    /// until the answer is sent. A request larger than the whole budget is admitted when nothing
    /// else is in flight.
    pub fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<Admitted, Refusal> {
        self.budget(client).spend(1)?;
        let request = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Overloaded { what: "requests", limit: self.most_in_flight })?;
        let kib = bytes.div_ceil(1024).clamp(1, self.most_body_kib) as u32;
        let body = self
            .body_kib
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| Refusal::Overloaded { what: "bytes of requests", limit: self.most_body_kib * 1024 })?;
        Ok(Admitted { _request: request, body, budget: self.body_kib.clone(), limit: self.most_body_kib * 1024 })
    }

    /// What `client` may still spend: the further votes of a batch it was admitted for.
    pub fn budget(&self, client: Option<IpAddr>) -> Budget {
        Budget { rate: self.rate.clone().zip(client) }
    }

    /// The client an HTTP request (or a gRPC call, by its metadata) comes from.
    pub fn client<'a>(&self, peer: Option<IpAddr>, forwarded_for: impl Iterator<Item = &'a [u8]>) -> Option<IpAddr> {
        self.clients.client(peer, forwarded_for)
    }
}

/// Where the client's address comes from: `TRUSTED_PROXIES`, the number of addresses that the
/// proxies in front of ingest append to `X-Forwarded-For`. With 0 the client is the peer. With
/// N, it is the N-th address from the right: the proxies append, so the addresses right of it were
/// written by them and it is the one the outermost trusted proxy saw; whatever a client writes
/// itself stays left of it. Google's external Application Load Balancer appends two
/// (`<client-ip>,<load-balancer-ip>`), so behind it N is 2.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientAddress {
    pub trusted_proxies: usize,
}

impl ClientAddress {
    /// The client of a request from `peer` whose `X-Forwarded-For` values are `forwarded_for` (each
    /// header line, in order). When there are fewer than `trusted_proxies` addresses, or that one
    /// does not parse, the client is the peer, and the miss is counted in
    /// `bandvote_ingest_forwarded_for_fallbacks_total{reason}`.
    pub fn client<'a>(&self, peer: Option<IpAddr>, forwarded_for: impl Iterator<Item = &'a [u8]>) -> Option<IpAddr> {
        let Some(from_right) = self.trusted_proxies.checked_sub(1) else { return peer };
        let hops: Vec<&[u8]> = forwarded_for.flat_map(|line| line.split(|&b| b == b',')).collect();
        let reason = match hops.iter().rev().nth(from_right) {
            None => "too_few_hops",
            Some(hop) => match std::str::from_utf8(hop).ok().and_then(|hop| hop.trim().parse().ok()) {
                Some(ip) => return Some(ip),
                None => "unparsable",
            },
        };
        metrics::counter!("bandvote_ingest_forwarded_for_fallbacks_total", "reason" => reason).increment(1);
        peer
    }
}

/// The key of a client's bucket: an IPv4 address, or the /64 of an IPv6 one (a subscriber gets a
/// whole /64, so one per address would give each client 2^64 buckets). IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`, a dual-stack socket's view of an IPv4 peer) are IPv4.
fn bucket_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(prefix.into())
        }
    }
}

/// The rest of a client's budget, for a request that holds more votes than the one it was admitted
/// with. Without a rate limit (or a client) it allows everything.
#[derive(Clone)]
pub struct Budget {
    rate: Option<(Arc<RateLimiter>, IpAddr)>,
}

impl Budget {
    /// Spends `votes` more tokens, or none when there are not that many.
    pub fn spend(&self, votes: u64) -> Result<(), Refusal> {
        match &self.rate {
            Some((rate, client)) if votes > 0 => rate.take(*client, votes, Instant::now()),
            _ => Ok(()),
        }
    }

    /// Charges a batch of `total` votes whose first was charged at admission; a batch larger than
    /// the whole burst is refused without spending anything.
    pub fn rest_of_batch(&self, total: usize) -> Result<(), Refusal> {
        self.within_burst(total)?;
        self.spend(total.saturating_sub(1) as u64)
    }

    /// Charges the next vote of a batch read as it arrives (a gRPC stream), which now holds `total`.
    pub fn next_of_batch(&self, total: usize) -> Result<(), Refusal> {
        self.within_burst(total)?;
        self.spend(1)
    }

    fn within_burst(&self, total: usize) -> Result<(), Refusal> {
        match &self.rate {
            Some((rate, _)) if total as f64 > rate.burst => {
                count_rate_limited(total as u64);
                Err(Refusal::OverBurst { burst: rate.burst as u64 })
            }
            _ => Ok(()),
        }
    }
}

/// A request's place in flight, given back when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    body: OwnedSemaphorePermit,
    budget: Arc<Semaphore>,
    limit: usize,
}

impl Admitted {
    /// Takes `bytes` more of the budget for a request that grows as it is read (a gRPC stream).
    pub fn grow(&mut self, bytes: usize) -> Result<(), Refusal> {
        let kib = bytes.div_ceil(1024).max(1) as u32;
        let more = self
            .budget
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| Refusal::Overloaded { what: "bytes of requests", limit: self.limit })?;
        self.body.merge(more);
        Ok(())
    }
}

/// The client an HTTP request was admitted for, for handlers that pass it on (the gRPC front).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// HTTP middleware for the vote paths: admission, then the request timeout. The request carries
/// its [`Client`] and its [`Budget`] to the handlers.
pub async fn admit_http(State(admission): State<Admission>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded_for = request.headers().get_all(X_FORWARDED_FOR);
    let client = admission.client(peer, forwarded_for.iter().map(HeaderValue::as_bytes));
    if let Some(client) = client {
        request.extensions_mut().insert(Client(client));
    }
    request.extensions_mut().insert(admission.budget(client));
    // A body without a length may be as large as the body limit allows.
    let length = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if length.is_some_and(|length| length > admission.largest_body) {
        // The same words as a body found too large while reading it, on every front.
        return ApiError(ErrorReply::body_too_large(bandvote_domain::reply::BODY_TOO_LARGE)).into_response();
    }
    let _admitted = match admission.admit(client, length.unwrap_or(admission.largest_body)) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.response(),
    };
    let timeout = admission.request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(ErrorReply::new(
            ErrorCode::Timeout,
            format!("the request did not finish within {timeout:?}; if it carried a vote_id, re-sending it is safe"),
        ))
        .into_response(),
    }
}

/// Counts votes refused by the per-client limit.
fn count_rate_limited(votes: u64) {
    metrics::counter!("bandvote_ingest_rate_limited_votes_total").increment(votes);
}

/// Token buckets per client, one token per vote.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// By [`bucket_key`].
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(per_second: f64, burst: f64) -> Self {
        RateLimiter { per_second, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `votes` tokens from `client`'s bucket, or none when it holds fewer.
    fn take(&self, client: IpAddr, votes: u64, now: Instant) -> Result<(), Refusal> {
        self.take_from(bucket_key(client), votes as f64, now).inspect_err(|_| count_rate_limited(votes))
    }

    fn take_from(&self, client: IpAddr, votes: f64, now: Instant) -> Result<(), Refusal> {
        if votes > self.burst {
            return Err(Refusal::OverBurst { burst: self.burst as u64 });
        }
        let mut buckets = self.buckets.lock().expect("the rate limiter never panics while locked");
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                // Every tracked client is busy: forget the oldest half rather than grow.
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                buckets.retain(|_, b| b.at > cut);
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= votes {
            bucket.tokens -= votes;
            Ok(())
        } else {
            let retry_after = Duration::from_secs_f64((votes - bucket.tokens) / self.per_second);
            Err(Refusal::RateLimited { retry_after })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admission(most_in_flight: usize, most_bytes: usize) -> Admission {
        Admission::new((most_in_flight, most_bytes, 1024), None, ClientAddress::default(), Duration::from_secs(1))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(ip(1), 1, start), Ok(()));
        }
        let Err(Refusal::RateLimited { retry_after }) = limiter.take(ip(1), 1, start) else { panic!("over the burst") };
        assert!((retry_after.as_secs_f64() - 0.5).abs() < 1e-6, "{retry_after:?}");
        assert_eq!(limiter.take(ip(2), 1, start), Ok(()), "clients have their own buckets");
        assert_eq!(limiter.take(ip(1), 1, start + Duration::from_millis(500)), Ok(()), "refilled at 2 per second");
        assert!(limiter.take(ip(1), 1, start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_batch_spends_a_token_per_vote_and_never_more_than_the_burst() {
        let limiter = RateLimiter::new(1.0, 10.0);
        let now = Instant::now();
        assert_eq!(limiter.take(ip(1), 7, now), Ok(()));
        let Err(Refusal::RateLimited { retry_after }) = limiter.take(ip(1), 4, now) else { panic!("3 left, 4 asked") };
        assert!((retry_after.as_secs_f64() - 1.0).abs() < 1e-6, "one more token in a second: {retry_after:?}");
        assert_eq!(limiter.take(ip(1), 3, now), Ok(()), "a refusal spends nothing");
        assert_eq!(limiter.take(ip(2), 11, now), Err(Refusal::OverBurst { burst: 10 }));
        assert_eq!(limiter.take(ip(2), 10, now), Ok(()), "the refused batch spent nothing");

        let budget = Budget { rate: Some((Arc::new(RateLimiter::new(1.0, 5.0)), ip(3))) };
        assert_eq!(budget.rest_of_batch(6), Err(Refusal::OverBurst { burst: 5 }));
        assert_eq!(budget.rest_of_batch(5), Ok(()), "four more after the one of the admission");
        assert!(budget.spend(1).is_ok() && budget.spend(1).is_err(), "one token was left");
        let stream = Budget { rate: Some((Arc::new(RateLimiter::new(1.0, 3.0)), ip(4))) };
        assert_eq!(stream.next_of_batch(2), Ok(()));
        assert_eq!(stream.next_of_batch(3), Ok(()));
        assert_eq!(stream.next_of_batch(4), Err(Refusal::OverBurst { burst: 3 }), "a stream past the burst");
        assert!(Refusal::OverBurst { burst: 5 }.reply().message.contains("5 one client may send at once"));
        assert_eq!(Budget { rate: None }.rest_of_batch(1_000_000), Ok(()), "no limit, no charge");
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let v6 = |text: &str| text.parse::<IpAddr>().expect("an address");
        assert_eq!(bucket_key(v6("2001:db8:1:2:aaaa::1")), bucket_key(v6("2001:db8:1:2:ffff:1:2:3")));
        assert_ne!(bucket_key(v6("2001:db8:1:2::1")), bucket_key(v6("2001:db8:1:3::1")));
        assert_eq!(bucket_key(v6("::ffff:203.0.113.7")), v6("203.0.113.7"));
        assert_eq!(bucket_key(v6("203.0.113.7")), v6("203.0.113.7"));
        assert_ne!(bucket_key(v6("203.0.113.7")), bucket_key(v6("203.0.113.8")), "IPv4 is keyed per address");
        let limiter = RateLimiter::new(1.0, 1.0);
        let now = Instant::now();
        assert_eq!(limiter.take(v6("2001:db8::1"), 1, now), Ok(()));
        assert!(limiter.take(v6("2001:db8::2"), 1, now).is_err(), "the same /64");
    }

    #[test]
    fn tracked_clients_stay_bounded() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let now = Instant::now();
        for n in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            let client = IpAddr::from(n.to_be_bytes());
            let _ = limiter.take(client, 1, now + Duration::from_micros(u64::from(n)));
        }
        assert!(limiter.buckets.lock().expect("lock").len() <= MAX_TRACKED_CLIENTS);
    }

    #[test]
    fn in_flight_requests_are_capped_and_released() {
        let admission = admission(2, 1 << 20);
        let first = admission.admit(None, 100).expect("first");
        let _second = admission.admit(None, 100).expect("second");
        assert_eq!(admission.admit(None, 100).unwrap_err(), Refusal::Overloaded { what: "requests", limit: 2 });
        drop(first);
        assert!(admission.admit(None, 100).is_ok(), "a finished request frees its place");
    }

    #[test]
    fn in_flight_bytes_are_capped_and_one_large_request_still_fits() {
        let admission = admission(100, 10 * 1024);
        let mut big = admission.admit(None, 4 * 1024).expect("4 KiB of 10");
        big.grow(2 * 1024).expect("grows to 6 KiB");
        let refused = admission.admit(None, 5 * 1024).unwrap_err();
        assert_eq!(refused, Refusal::Overloaded { what: "bytes of requests", limit: 10 * 1024 });
        let _small = admission.admit(None, 3000).expect("3 KiB more fits");
        drop(big);
        drop(_small);
        let _huge = admission.admit(None, 1 << 30).expect("alone, a request larger than the budget is admitted");
        assert!(admission.admit(None, 1).is_err());
    }

    #[test]
    fn the_client_is_the_address_the_outermost_trusted_proxy_saw() {
        let peer = Some(ip(9));
        let client = |trusted_proxies: usize, lines: &[&str]| {
            ClientAddress { trusted_proxies }.client(peer, lines.iter().map(|line| line.as_bytes()))
        };
        let addr = |text: &str| Some(text.parse::<IpAddr>().expect("an address"));
        // Google's load balancer appends `<client-ip>,<load-balancer-ip>` to what the client sent.
        let spoofed = ["1.2.3.4, 203.0.113.7,34.120.0.1"];
        assert_eq!(client(2, &spoofed), addr("203.0.113.7"), "what the client wrote is ignored");
        assert_eq!(client(0, &spoofed), peer, "no trusted proxy: the peer");
        assert_eq!(client(1, &spoofed), addr("34.120.0.1"));
        assert_eq!(client(2, &["1.2.3.4", "203.0.113.7, 34.120.0.1"]), addr("203.0.113.7"), "lines are joined");
        assert_eq!(client(2, &["2001:db8::7,34.120.0.1"]), addr("2001:db8::7"));
        // Whatever the client writes in front of the proxies' addresses, even bytes that are not
        // text, leaves them readable.
        assert_eq!(
            ClientAddress { trusted_proxies: 2 }
                .client(peer, [&b"\xff\xfe,,junk, 203.0.113.7,34.120.0.1"[..]].into_iter()),
            addr("203.0.113.7")
        );
        // Too few addresses, or one that does not parse: the peer.
        assert_eq!(client(2, &["203.0.113.7"]), peer);
        assert_eq!(client(2, &[]), peer);
        assert_eq!(client(2, &["not-an-address, 34.120.0.1"]), peer);
    }
}
