//! The console's server: renders the pages, serves the browser build, and answers the server
//! functions by calling the logs API.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use bandvote_logs_ui::{
    api::LogsApi,
    app::{App, shell},
};
use bandvote_ops::{
    config::{TelemetryArgs, parse_duration},
    health,
};
use clap::Parser;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};

#[derive(Debug, clap::Parser)]
#[command(name = "bandvote-logs-ui", version, about = "The bandvote logs console (Leptos, server-rendered).")]
struct Config {
    /// Address to listen on (`0.0.0.0` in a container).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 8085)]
    port: u16,
    /// Base URL of the logs API.
    #[arg(long, env = "LOGS_API_URL", default_value = "http://127.0.0.1:8084")]
    logs_api_url: String,
    /// Sign requests to the logs API with a Google ID token for this audience (on Cloud Run: the
    /// API's URL). Unset: plain requests.
    #[arg(long, env = "LOGS_API_AUDIENCE")]
    logs_api_audience: Option<String>,
    /// The metadata server that issues ID tokens.
    #[arg(long, env = "GCE_METADATA_HOST", default_value = "metadata.google.internal")]
    metadata_host: String,
    /// Longest wait for the logs API.
    #[arg(long, env = "LOGS_API_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    logs_api_timeout: Duration,
    /// The folder with the browser build (`pkg/`) that cargo-leptos made.
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site")]
    site_root: String,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "8s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    bandvote_ops::telemetry::init_logs(&config.telemetry);
    bandvote_ops::telemetry::metrics();
    let shutdown = bandvote_ops::shutdown::on_signal();
    bandvote_ops::shutdown::exit_if_stuck(&shutdown, config.shutdown_grace + Duration::from_secs(5));

    let api = LogsApi::new(
        &config.logs_api_url,
        config.logs_api_timeout,
        config.logs_api_audience.as_deref(),
        &config.metadata_host,
    )
    .context("cannot build the HTTP client")?;
    let addr: SocketAddr = format!("{}:{}", config.host, config.port)
        .parse()
        .with_context(|| format!("HOST {:?} and PORT {} are not an address", config.host, config.port))?;
    let options = LeptosOptions::builder()
        .output_name("bandvote-logs-ui")
        .site_root(config.site_root.as_str())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .build();

    let ready_api = api.clone();
    let ready: health::ReadyCheck = Arc::new(move || {
        let api = ready_api.clone();
        Box::pin(async move { api.check().await })
    });
    let routes = generate_route_list(App);
    let context = {
        let api = api.clone();
        move || provide_context(api.clone())
    };
    let app = Router::new()
        .leptos_routes_with_context(&options, routes, context, {
            let options = options.clone();
            move || shell(options.clone())
        })
        .merge(health::routes(ready))
        .fallback(leptos_axum::file_and_error_handler(shell))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(options);

    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, logs_api = %api.base(), site_root = %config.site_root, "logs console listening");
    let stopped = shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await?;
    tracing::info!("logs console stopped");
    Ok(())
}
