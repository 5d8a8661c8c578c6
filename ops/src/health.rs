//! The operational endpoints every service serves: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text format).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

/// Checks the dependencies of a service; `Err` names the one that does not answer and why.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How long `/readyz` waits for the dependency checks.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Routes `/healthz`, `/readyz` and `/metrics`, to merge into a service's router.
pub fn routes<S: Clone + Send + Sync + 'static>(ready: ReadyCheck) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
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
