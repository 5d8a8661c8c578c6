//! The operational endpoints every service serves: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text format).
//!
//! `/health/live` and `/health/ready` answer the same as `/healthz` and `/readyz`: Cloud Run
//! reserves some URL paths that end in `z` and advises against serving any, so the Cloud Run
//! services' probes and checks use these.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

/// Checks the dependencies of a service; `Err` names the one that does not answer and why.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How long `/readyz` waits for the dependency checks.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Routes `/healthz`, `/readyz` and `/metrics`, to merge into a service's router.
pub fn routes<S: Clone + Send + Sync + 'static>(ready: ReadyCheck) -> Router<S> {
    let readiness = get(move || {
        let ready = ready.clone();
        async move {
            match tokio::time::timeout(READY_TIMEOUT, ready()).await {
                Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
                Ok(Err(reason)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": reason})))
                }
                Err(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "unavailable", "reason": "dependency checks timed out"})),
                ),
            }
        }
    });
    healthz()
        .route("/readyz", readiness.clone())
        .route("/health/ready", readiness)
        .route("/metrics", get(|| async { crate::telemetry::metrics().render().into_response() }))
}

/// Routes `/healthz` (and `/health/live`) alone: `{"status":"ok"}` while the process runs,
/// touching no dependency, so that it costs nothing wherever it is served (a load balancer's
/// health check on a public port).
pub fn healthz<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let alive = get(|| async { Json(json!({"status": "ok"})) });
    Router::new().route("/healthz", alive.clone()).route("/health/live", alive)
}

/// A check that asks the dependencies at most once per `fresh`: within that time after a check
/// finished, every caller gets its answer, and callers that arrive while a check runs wait for
/// that one instead of starting their own. A flood of `/readyz` then costs the dependencies one
/// request per `fresh`, however many callers there are.
pub fn cached(check: ReadyCheck, fresh: Duration) -> ReadyCheck {
    /// The last answer and when it was given.
    type Last = Option<(Instant, Result<(), String>)>;
    let last: Arc<tokio::sync::Mutex<Last>> = Arc::default();
    Arc::new(move || {
        let (check, last) = (check.clone(), last.clone());
        Box::pin(async move {
            let mut last = last.lock().await;
            if let Some((at, answer)) = last.as_ref()
                && at.elapsed() < fresh
            {
                return answer.clone();
            }
            let answer = check().await;
            *last = Some((Instant::now(), answer.clone()));
            answer
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_cached_check_asks_once_per_period_however_many_call() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        let slow: ReadyCheck = Arc::new(move || {
            let counted = counted.clone();
            Box::pin(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err("Kafka does not answer".to_owned())
            })
        });
        let check = cached(slow, Duration::from_millis(300));
        let callers: Vec<_> = (0..100).map(|_| tokio::spawn(check())).collect();
        for caller in callers {
            assert_eq!(caller.await.expect("a caller"), Err("Kafka does not answer".to_owned()));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "concurrent callers share one check");
        assert!(check().await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 1, "a fresh answer is reused");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(check().await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 2, "a stale answer is checked again");
    }

    #[tokio::test]
    async fn the_paths_cloud_run_can_serve_answer_as_the_usual_ones() {
        let failing: ReadyCheck = Arc::new(|| Box::pin(async { Err("MongoDB does not answer".to_owned()) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let server = tokio::spawn(async move { axum::serve(listener, routes::<()>(failing)).await });
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = tokio::net::TcpStream::connect(address).await.expect("a connection");
            let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("sent");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("an answer");
            answer
        };
        for (usual, for_cloud_run) in [("/healthz", "/health/live"), ("/readyz", "/health/ready")] {
            let (usual, other) = (get(usual).await, get(for_cloud_run).await);
            assert_eq!(usual.lines().next(), other.lines().next(), "{for_cloud_run}: {other}");
            assert_eq!(usual.rsplit("\r\n\r\n").next(), other.rsplit("\r\n\r\n").next(), "{for_cloud_run}");
        }
        let ready = get("/health/ready").await;
        assert!(ready.starts_with("HTTP/1.1 503") && ready.contains("MongoDB does not answer"), "{ready}");
        assert!(get("/health/live").await.starts_with("HTTP/1.1 200"));
        server.abort();
    }
}
