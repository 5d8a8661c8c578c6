//! One cancellation token for SIGINT and SIGTERM.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on the first SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received, draining");
        cancel.cancel();
    });
    token
}

/// Ends the process if shutdown takes longer than `limit` after `token` is cancelled.
///
/// Draining is bounded by each service's grace period, but a client library can still block on a
/// dependency that went away (a Kafka commit waits for its coordinator); the orchestrator would
/// kill the process anyway, and this says why first.
pub fn exit_if_stuck(token: &CancellationToken, limit: std::time::Duration) {
    let token = token.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(?limit, "shutdown did not finish in time; exiting");
            std::process::exit(70);
        });
    });
}
