//! bandvote logs API: the read side of the MongoDB vote log, for the web console and for people.
//!
//! * [`query`] turns a request's query string into a [`query::LogQuery`]: every parameter is
//!   checked and bounded, and only becomes a plain value in a filter, never a query operator.
//! * [`store`] runs the reads the API has (latest votes, one vote, tallies, the result) with a
//!   time limit on each; a page is read as range scans on the index, not as a sort of the log.
//! * [`tally`] keeps the tallies up to date in the background: a request answers at once with the
//!   latest one and the time it is as of.
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
pub mod tally;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use bandvote_domain::MongoNames;
use bandvote_ops::config::{MongoArgs, TelemetryArgs, parse_duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    store::VoteStore,
    tally::{TallyRefresher, TallySettings},
};

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
    /// Longest time a request's queries (a page's windows together) may take in MongoDB before
    /// the API answers 503.
    #[arg(long = "query-timeout", env = "QUERY_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// How often each tally is recomputed in the background (at least 100 ms apart): an answer
    /// is about this old at most (each computation starts early enough for that).
    #[arg(long = "tally-cache", env = "TALLY_CACHE", value_name = "TALLY_CACHE", default_value = "2s", value_parser = parse_duration)]
    pub tally_interval: Duration,
    /// How long after its `logged_at` a vote is surely readable in the log (the consumer's write
    /// has ended): the unfiltered tally keeps the groups of older votes and reads only the newer
    /// ones each time. A vote written later than this is counted by the next recount.
    #[arg(long = "tally-settle", env = "TALLY_SETTLE", default_value = "2s", value_parser = parse_duration)]
    pub tally_settle: Duration,
    /// How often the unfiltered tally counts the whole log again, in the background.
    #[arg(long = "tally-recount", env = "TALLY_RECOUNT", default_value = "60s", value_parser = parse_duration)]
    pub tally_recount: Duration,
    /// Longest a request waits for the first tally of a filter nobody asked for recently before
    /// the API answers 503 `tally_pending`.
    #[arg(long = "tally-wait", env = "TALLY_WAIT", default_value = "1s", value_parser = parse_duration)]
    pub tally_wait: Duration,
    /// Longest a background query (a tally, the log's oldest and newest vote) may take in MongoDB.
    #[arg(long = "background-query-timeout", env = "BACKGROUND_QUERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub background_query_timeout: Duration,
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
        let store = VoteStore::connect(&config.mongo.uri, &names, config.query_timeout)
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
        // The background work ends with the server: the tallies' refreshers and the one look for
        // the log's ends.
        let background = shutdown.child_token();
        let _stop_background = background.clone().drop_guard();
        tokio::spawn(store.clone().learn_ends(config.background_query_timeout, background.clone()));
        let settings = TallySettings {
            interval: config.tally_interval,
            wait: config.tally_wait,
            query_timeout: config.background_query_timeout,
            settle: config.tally_settle,
            recount: config.tally_recount,
        };
        let tallies = TallyRefresher::start(store.clone(), settings, background);
        let router = http::router(store, tallies, http::Limits { max_page_size: config.max_page_size });
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
