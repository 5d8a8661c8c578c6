//! bandvote logs API: the read side of the MongoDB vote log, for the web console and for people.
//!
//! * [`query`] turns a request's query string into a [`query::LogQuery`]: every parameter is
//!   checked and bounded, and only becomes a plain value in a filter, never a query operator.
//! * [`store`] runs the three reads the API has (latest votes, one vote, tallies) with a time
//!   limit on each.
//! * [`http`] maps them to `GET /votes`, `GET /votes/{vote_id}` and `GET /tallies`, and serves
//!   the OpenAPI document at `GET /openapi.json`.
//!
//! Invariant: the API only reads. It holds the Cloud Run side's only MongoDB credentials, and a
//! read-only user is enough for it.
//!
//! Pagination is by keyset, not by skip: a page ends at a cursor (`received_at`, `vote_id`) and the
//! next page starts strictly below it in the "newest first" order, so votes that arrive while a
//! reader pages never shift a page and no vote is shown twice or skipped.

pub mod http;
pub mod query;
pub mod store;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use bandvote_domain::MongoNames;
use bandvote_ops::config::{MongoArgs, TelemetryArgs, parse_duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::VoteStore;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bandvote-logs-api", version, about = "The bandvote logs API: the MongoDB vote log over HTTP.")]
pub struct Config {
    /// Address to listen on (`0.0.0.0` in a container).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 8084)]
    pub port: u16,
    /// The most votes one page may ask for with `limit`.
    #[arg(long, env = "MAX_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_page_size: u32,
    /// Longest time a query may take in MongoDB before the API answers 503.
    #[arg(long = "query-timeout", env = "QUERY_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// How long a computed tally is reused before it is computed again.
    #[arg(long = "tally-cache", env = "TALLY_CACHE", default_value = "2s", value_parser = parse_duration)]
    pub tally_cache: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "8s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

pub struct LogsApi {
    config: Config,
    store: VoteStore,
    listener: TcpListener,
}

impl LogsApi {
    /// Binds the port and prepares the MongoDB client. MongoDB is not contacted yet: the API
    /// starts (and answers `/healthz`) at once, and `/readyz` says whether MongoDB answers.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        bandvote_ops::telemetry::metrics();
        let names = MongoNames::new(&config.mongo.database);
        let store = VoteStore::connect(&config.mongo.uri, &names, config.query_timeout, config.tally_cache)
            .await
            .context("MONGODB_URI is not a usable MongoDB connection string")?;
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        Ok(LogsApi { config, store, listener })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let LogsApi { config, store, listener } = self;
        let addr = listener.local_addr()?;
        let router = http::router(store, http::Limits { max_page_size: config.max_page_size });
        let stopped = shutdown.clone();
        let server = axum::serve(listener, router).with_graceful_shutdown(async move { stopped.cancelled().await });
        tracing::info!(%addr, database = %config.mongo.database, "logs API listening");
        let grace = config.shutdown_grace;
        tokio::select! {
            result = server => result?,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "requests still in flight after the grace period; stopping anyway");
            }
        }
        tracing::info!("logs API stopped");
        Ok(())
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    LogsApi::build(config).await?.run_until_stopped(shutdown).await
}
