//! Admission: what keeps ingest answering under more load than it can take.
//!
//! * In flight: at most `MAX_IN_FLIGHT` vote requests at once, carrying at most
//!   `MAX_IN_FLIGHT_BYTES` of request bodies, over every route together. One more is refused at
//!   once with 503 `overloaded` / `RESOURCE_EXHAUSTED` instead of waiting in a queue. A request's
//!   working memory grows with its body (a batch of 1000 votes, 90 KB of JSON, takes a few MB
//!   parsed, checked and queued for Kafka), so the byte budget is what bounds memory.
//! * Per client (optional): a token bucket of `RATE_LIMIT_PER_CLIENT` requests per second with a
//!   burst of `RATE_LIMIT_BURST`, keyed by the client's address (or the first `X-Forwarded-For`
//!   hop behind a trusted proxy). Over it: 429 `rate_limited` / `RESOURCE_EXHAUSTED` with
//!   `Retry-After`. The buckets of at most `MAX_TRACKED_CLIENTS` clients are kept.
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
        HeaderMap, HeaderValue,
        header::{CONTENT_LENGTH, RETRY_AFTER},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use bandvote_domain::reply::ErrorReply;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::reply::ApiError;

/// Buckets kept at most; past it, full buckets (clients quiet for a while) are dropped first.
const MAX_TRACKED_CLIENTS: usize = 100_000;

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
}

impl Refusal {
    pub fn reply(self) -> ErrorReply {
        match self {
            Refusal::Overloaded { what, limit } => ErrorReply::new(
                503,
                "overloaded",
                format!("ingest is at its limit of {limit} {what} in flight; try again shortly"),
            ),
            Refusal::RateLimited { retry_after } => ErrorReply::new(
                429,
                "rate_limited",
                format!("too many requests from this client; try again in {} s", retry_seconds(retry_after)),
            ),
        }
    }

    pub fn status(self) -> tonic::Status {
        tonic::Status::resource_exhausted(self.reply().message)
    }

    fn retry_after(self) -> Duration {
        match self {
            Refusal::Overloaded { .. } => Duration::from_secs(1),
            Refusal::RateLimited { retry_after } => retry_after,
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
    trust_forwarded_for: bool,
    pub request_timeout: Duration,
    largest_body: usize,
}

impl Admission {
    /// `largest_body` is `MAX_BODY_BYTES`: a larger Content-Length is refused before admission, and
    /// a body without one is counted as this large.
    pub fn new(
        (most_in_flight, most_bytes, largest_body): (usize, usize, usize),
        per_client: Option<(f64, f64)>,
        trust_forwarded_for: bool,
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
            trust_forwarded_for,
            request_timeout,
            largest_body,
        }
    }

    /// Admits one request of about `bytes` from `client`; it holds its place until the answer is
    /// sent. A request larger than the whole budget is admitted when nothing else is in flight.
    pub fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<Admitted, Refusal> {
        if let (Some(rate), Some(client)) = (&self.rate, client) {
            rate.take(client, Instant::now())?;
        }
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

    /// The client a request comes from: the peer, or the first `X-Forwarded-For` hop when the peer
    /// is a trusted proxy.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let first = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next());
            if let Some(ip) = first.and_then(|hop| hop.trim().parse().ok()) {
                return Some(ip);
            }
        }
        peer
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

/// HTTP middleware for the vote paths: admission, then the request timeout.
pub async fn admit_http(State(admission): State<Admission>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let client = admission.client(peer, request.headers());
    if let Some(client) = client {
        request.extensions_mut().insert(Client(client));
    }
    // A body without a length may be as large as the body limit allows.
    let length = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if length.is_some_and(|length| length > admission.largest_body) {
        // The same words as a body found too large while reading it, on every front.
        return ApiError(ErrorReply::body_too_large(bandvote_domain::reply::BODY_TOO_LARGE)).into_response();
    }
    let _admitted = match admission.admit(client, length.unwrap_or(admission.largest_body)) {
        Ok(permit) => permit,
        Err(refusal) => {
            let seconds = retry_seconds(refusal.retry_after());
            let mut response = ApiError(refusal.reply()).into_response();
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
    };
    let timeout = admission.request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(ErrorReply::new(
            503,
            "timeout",
            format!("the request did not finish within {timeout:?}; if it carried a vote_id, re-sending it is safe"),
        ))
        .into_response(),
    }
}

/// Token buckets per client.
struct RateLimiter {
    per_second: f64,
    burst: f64,
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

    fn take(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
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
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let retry_after = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second);
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

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(ip(1), start), Ok(()));
        }
        let Err(Refusal::RateLimited { retry_after }) = limiter.take(ip(1), start) else { panic!("over the burst") };
        assert!((retry_after.as_secs_f64() - 0.5).abs() < 1e-6, "{retry_after:?}");
        assert_eq!(limiter.take(ip(2), start), Ok(()), "clients have their own buckets");
        assert_eq!(limiter.take(ip(1), start + Duration::from_millis(500)), Ok(()), "refilled at 2 per second");
        assert!(limiter.take(ip(1), start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn tracked_clients_stay_bounded() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let now = Instant::now();
        for n in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            let client = IpAddr::from(n.to_be_bytes());
            let _ = limiter.take(client, now + Duration::from_micros(u64::from(n)));
        }
        assert!(limiter.buckets.lock().expect("lock").len() <= MAX_TRACKED_CLIENTS);
    }

    #[test]
    fn in_flight_requests_are_capped_and_released() {
        let admission = Admission::new((2, 1 << 20, 1024), None, false, Duration::from_secs(1));
        let first = admission.admit(None, 100).expect("first");
        let _second = admission.admit(None, 100).expect("second");
        assert_eq!(admission.admit(None, 100).unwrap_err(), Refusal::Overloaded { what: "requests", limit: 2 });
        drop(first);
        assert!(admission.admit(None, 100).is_ok(), "a finished request frees its place");
    }

    #[test]
    fn in_flight_bytes_are_capped_and_one_large_request_still_fits() {
        let admission = Admission::new((100, 10 * 1024, 1024), None, false, Duration::from_secs(1));
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
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7, 10.0.0.9"));
        let peer = Some(ip(9));
        let trusting = Admission::new((1, 1024, 1024), None, true, Duration::from_secs(1));
        let wary = Admission::new((1, 1024, 1024), None, false, Duration::from_secs(1));
        assert_eq!(trusting.client(peer, &headers), Some(IpAddr::from([203, 0, 113, 7])));
        assert_eq!(wary.client(peer, &headers), peer);
    }
}
