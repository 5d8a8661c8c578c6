//! The operational endpoints every service serves: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text format).

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
    healthz()
        .route(
            "/readyz",
            get(move || {
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
            }),
        )
        .route("/metrics", get(|| async { crate::telemetry::metrics().render().into_response() }))
}

/// Routes `/healthz` alone: `{"status":"ok"}` while the process runs, touching no dependency, so
/// that it costs nothing wherever it is served (a load balancer's health check on a public port).
pub fn healthz<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
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
}
