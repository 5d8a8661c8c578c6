//! bandvote ingest: the two vote routes in front of Kafka.
//!
//! * The gRPC route ([`grpc`]): `bandvote.v1.Votes` and the original `confproto.getInfo`, with
//!   health and reflection, plus its HTTP front `POST /grpc/insert` ([`grpc_front`]) that forwards
//!   each vote over a real gRPC channel, as the original "gRPC client" did.
//! * The HTTP route ([`http`]): `POST /votes`, `POST /votes/batch` and the original paths.
//! * The Wasm route, in one of two shapes:
//!   - with `WASM_COMPONENT`, embedded (`wasm_host`, the default cargo feature `wasm-host`): the
//!     checker component of `ingest-wasm` reads and checks each request's body in a WebAssembly
//!     sandbox inside this process, and the votes it returns are cast here;
//!   - without, its producer side ([`http::wasm_router`]): `POST /wasm/votes` and
//!     `/wasm/votes/batch`, which the `wasi:http` front of `ingest-wasm` (under `wasmtime serve`)
//!     forwards checked votes to over loopback.
//!
//! Every route goes through [`cast::Caster`]: validate, check the contest, give the vote its id, and
//! publish it with the process's one [`publisher::Publisher`].
//!
//! Invariant: a route answers success only after Kafka acknowledged the vote; when Kafka is down
//! or slow it answers 503 / `UNAVAILABLE` within `KAFKA_PRODUCE_TIMEOUT`.

pub mod cast;
pub mod grpc;
pub mod grpc_front;
pub mod http;
pub mod limits;
pub mod publisher;
pub mod reply;
pub mod standing;
#[cfg(test)]
mod testing;
#[cfg(feature = "wasm-host")]
pub mod wasm_host;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use axum::{Router, extract::DefaultBodyLimit, serve::ListenerExt as _};
use bandvote_ops::{
    config::{ContestArgs, KafkaArgs, TelemetryArgs, parse_duration},
    health,
};
use bandvote_proto::{confproto::get_info_server::GetInfoServer, v1::votes_server::VotesServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use bandvote_domain::reply::ErrorCode;

use crate::{cast::Caster, grpc::VoteService, publisher::Publisher, reply::ApiError};

/// How long a readiness answer is reused: a flood of `/readyz` costs Kafka one metadata request
/// per this long.
const READINESS_FRESH: Duration = Duration::from_secs(1);

/// Which routes this process serves. The gRPC route's pod serves `grpc`, the HTTP route's pod
/// `http`, the Wasm route's producer `wasm`; locally one process serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Serve {
    Grpc,
    Http,
    /// The producer side of the Wasm route: `POST /wasm/votes` and `/wasm/votes/batch`, called
    /// by the WebAssembly front (`ingest-wasm`) over loopback.
    Wasm,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bandvote-ingest", version, about = "The bandvote vote routes: gRPC and HTTP in front of Kafka.")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// HTTP port: the HTTP route, the `/grpc/insert` front, and `/healthz` for a load balancer.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Operations port: `/healthz`, `/readyz` and `/metrics`, for probes and Prometheus. Keep it
    /// off every public route.
    #[arg(long, env = "OPS_PORT", default_value_t = 9090)]
    pub ops_port: u16,
    /// gRPC port (`bandvote.v1.Votes`, `confproto.getInfo`, health, reflection).
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// The gRPC server that `/grpc/insert` forwards to; by default this process's own.
    #[arg(long, env = "GRPC_TARGET")]
    pub grpc_target: Option<String>,
    /// Routes to serve, comma separated.
    #[arg(long, env = "INGEST_ROUTES", value_delimiter = ',', default_value = "grpc,http")]
    pub routes: Vec<Serve>,
    /// The Wasm route's checker component (`bandvote_checker.wasm`, from `dev/build-wasm`). With
    /// `wasm` among the routes, this process serves the Wasm route's vote paths itself: each body
    /// is checked by the component in a WebAssembly sandbox, then cast here. Without it, the
    /// `wasm` route takes the votes that the `wasi:http` front under `wasmtime serve` checked.
    #[arg(long, env = "WASM_COMPONENT")]
    pub wasm_component: Option<std::path::PathBuf>,
    /// Longest wait for Kafka's acknowledgement before answering 503 / UNAVAILABLE.
    #[arg(long = "kafka-produce-timeout", env = "KAFKA_PRODUCE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub produce_timeout: Duration,
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Most votes in one batch (HTTP or gRPC).
    #[arg(long, env = "MAX_BATCH_VOTES", default_value_t = 1000)]
    pub max_batch_votes: usize,
    /// Most vote requests in flight at once, over every route; one more is refused at once with
    /// 503 `overloaded` (gRPC `RESOURCE_EXHAUSTED`).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Most bytes of vote requests in flight at once (by Content-Length; a body without one counts
    /// as MAX_BODY_BYTES). This bounds memory: over it, 503 `overloaded`.
    #[arg(long, env = "MAX_IN_FLIGHT_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
    /// Longest time one vote request may take before it is answered 503 `timeout` (gRPC `CANCELLED`).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Votes per second one client may send (0: no limit); over it, 429 `rate_limited`. A batch
    /// of n votes counts n.
    #[arg(long, env = "RATE_LIMIT_PER_CLIENT", default_value_t = 0.0)]
    pub rate_limit_per_client: f64,
    /// Votes one client may send at once before its rate applies; a larger batch is refused.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 50.0)]
    pub rate_limit_burst: f64,
    /// How many addresses the trusted proxies in front of ingest append to `X-Forwarded-For`
    /// (gRPC: `x-forwarded-for` metadata). 0: the client is the peer address. N: the client is the
    /// N-th address from the right, the one the outermost trusted proxy saw. Google's external
    /// Application Load Balancer appends two, so 2 behind it.
    #[arg(long, env = "TRUSTED_PROXIES", default_value_t = 0)]
    pub trusted_proxies: usize,
    /// Replaced by TRUSTED_PROXIES; when set, ingest refuses to start rather than guess.
    #[arg(long, env = "TRUST_FORWARDED_FOR", hide = true)]
    pub trust_forwarded_for: Option<String>,
    /// Honour the `x-bandvote-noop` header (gRPC metadata) on every vote path: check, stamp and
    /// encode the vote, then answer without Kafka. For benchmarks only; never in production.
    #[arg(long, env = "NOOP_ROUTES", default_value_t = false, action = clap::ArgAction::Set)]
    pub noop_routes: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "8s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// The Redis the consumers count in. When set, ingest answers at once what the consumers would
    /// refuse: a voter over the contest's rule (409 `limit_reached`), a `vote_id` used before for
    /// another vote (409 `vote_id_conflict`); a vote counted before is accepted without sending it
    /// again. Without it the consumers still apply the rule, and log the refusals.
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// The consumers' REDIS_KEY_PREFIX.
    #[arg(long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", default_value = "bandvote")]
    pub redis_key_prefix: String,
    /// The consumers' RESEND_WINDOW.
    #[arg(long = "resend-window", env = "RESEND_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub resend_window: Duration,
    #[command(flatten)]
    pub contest: ContestArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A built ingest service, listening, not yet serving.
pub struct Ingest {
    config: Config,
    caster: Caster,
    http: TcpListener,
    grpc: Option<TcpListener>,
    ops: TcpListener,
    checker: Option<Checker>,
}

#[cfg(feature = "wasm-host")]
use wasm_host::Checker;

/// A build without the `wasm-host` feature never has a checker.
#[cfg(not(feature = "wasm-host"))]
#[derive(Clone)]
enum Checker {}

#[cfg(feature = "wasm-host")]
fn load_checker(path: &std::path::Path) -> anyhow::Result<Checker> {
    Checker::load(path)
}

#[cfg(not(feature = "wasm-host"))]
fn load_checker(path: &std::path::Path) -> anyhow::Result<Checker> {
    anyhow::bail!(
        "WASM_COMPONENT is set ({}), but this ingest is built without its `wasm-host` feature: build it with \
         default features (`cargo build -p bandvote-ingest`), or unset WASM_COMPONENT and put the Wasm route's \
         wasi:http front (`dev/build-wasm`) under `wasmtime serve` in front of it",
        path.display()
    )
}

impl Ingest {
    /// Binds the listeners, creates the producer and (when allowed) the topics.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if let Some(old) = &config.trust_forwarded_for {
            anyhow::bail!(
                "TRUST_FORWARDED_FOR (--trust-forwarded-for={old}) is replaced by TRUSTED_PROXIES: the number of \
                 addresses the trusted proxies in front of ingest append to X-Forwarded-For (2 behind Google's \
                 load balancer, 0 for none); the client is that many addresses from the right"
            );
        }
        config.kafka.validate().map_err(anyhow::Error::msg)?;
        let checker = match &config.wasm_component {
            Some(path) if config.routes.contains(&Serve::Wasm) => Some(load_checker(path)?),
            Some(_) => anyhow::bail!("WASM_COMPONENT is set, but INGEST_ROUTES does not serve the wasm route"),
            None => None,
        };
        let contest = config.contest.load().map_err(anyhow::Error::msg)?.unwrap_or_default();
        bandvote_ops::telemetry::metrics();
        if let Err(err) = bandvote_ops::topics::ensure(&config.kafka).await {
            tracing::warn!(error = %err, "cannot make sure the topics exist yet; votes are refused until Kafka answers");
        }
        let publisher =
            Publisher::new(&config.kafka, config.produce_timeout).context("cannot create the Kafka producer")?;
        let contest = Arc::new(contest);
        let mut caster = Caster::new(publisher.clone(), contest.clone(), config.noop_routes);
        if let Some(url) = &config.redis_url {
            let keys = bandvote_domain::RedisKeys::new(&config.redis_key_prefix);
            let standings = standing::Standings::connect(url, keys, config.resend_window, contest, publisher)
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            caster = caster.with_standings(standings);
        }
        let http = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let grpc = if config.routes.contains(&Serve::Grpc) {
            Some(
                TcpListener::bind((config.host.as_str(), config.grpc_port))
                    .await
                    .with_context(|| format!("cannot listen on {}:{} for gRPC", config.host, config.grpc_port))?,
            )
        } else {
            None
        };
        let ops = TcpListener::bind((config.host.as_str(), config.ops_port))
            .await
            .with_context(|| format!("cannot listen on {}:{} for the ops endpoints", config.host, config.ops_port))?;
        Ok(Ingest { config, caster, http, grpc, ops, checker })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr().expect("a bound listener has an address")
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` is cancelled, then drains requests and flushes the producer.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Ingest { config, caster, http, grpc, ops, checker } = self;
        // The front reaches this process's own gRPC server over loopback, so that the server can
        // tell its calls from those of anyone else (see `grpc::VoteService`).
        let front_target = config.grpc_target.clone().or_else(|| {
            let mut addr = grpc.as_ref()?.local_addr().ok()?;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            Some(format!("http://{addr}"))
        });
        let http_addr = http.local_addr()?;
        let grpc_addr = grpc.as_ref().map(TcpListener::local_addr).transpose()?;
        let ops_addr = ops.local_addr()?;

        let admission = limits::Admission::new(
            (config.max_in_flight, config.max_in_flight_bytes, config.max_body_bytes),
            Some((config.rate_limit_per_client, config.rate_limit_burst)),
            limits::ClientAddress { trusted_proxies: config.trusted_proxies },
            config.request_timeout,
        );
        let mut router = Router::new();
        if config.routes.contains(&Serve::Http) {
            let limits = http::Limits { max_body_bytes: config.max_body_bytes, max_batch: config.max_batch_votes };
            router = router.merge(http::router(caster.clone(), limits));
        }
        if config.routes.contains(&Serve::Wasm) {
            let limits = http::Limits { max_body_bytes: config.max_body_bytes, max_batch: config.max_batch_votes };
            router = router.merge(match checker.clone() {
                #[cfg(feature = "wasm-host")]
                Some(checker) => wasm_host::router(caster.clone(), limits, checker),
                #[cfg(not(feature = "wasm-host"))]
                Some(never) => match never {},
                None => http::wasm_router(caster.clone(), limits),
            });
        }
        if let Some(target) = &front_target {
            let timeout = config.produce_timeout + Duration::from_secs(2);
            router = router.merge(
                grpc_front::router(target, timeout).with_context(|| format!("GRPC_TARGET {target:?} is not a URI"))?,
            );
        }
        let router = router.layer(axum::middleware::from_fn_with_state(admission.clone(), limits::admit_http));
        let router = router
            // For a load balancer's health check: it asks nothing of Kafka. Readiness is on the ops port.
            .merge(health::healthz())
            .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such path; votes go to POST /votes") })
            .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
                let takes =
                    if matches!(uri.path(), "/healthz" | "/openapi.json") { "GET" } else { "POST with a JSON vote" };
                ApiError(bandvote_domain::reply::ErrorReply::method_not_allowed(method.as_str(), takes))
            })
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(tower_http::trace::TraceLayer::new_for_http());

        // The ops port. Readiness asks Kafka for the topic's metadata at most once a second,
        // however often probes, health checks or anyone else ask.
        let publisher = caster.publisher().clone();
        let ready: health::ReadyCheck = Arc::new(move || {
            let publisher = publisher.clone();
            Box::pin(async move {
                metrics::counter!("bandvote_ingest_readiness_checks_total").increment(1);
                publisher.check().await
            })
        });
        let ops_router: Router = health::routes(health::cached(ready, READINESS_FRESH))
            .fallback(|| async {
                ApiError::new(ErrorCode::NotFound, "no such path; this port serves /healthz, /readyz and /metrics")
            })
            .method_not_allowed_fallback(|method: axum::http::Method| async move {
                ApiError(bandvote_domain::reply::ErrorReply::method_not_allowed(method.as_str(), "GET"))
            });

        let grace = config.shutdown_grace;
        let stopped = shutdown.clone();
        let http = http.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let http_server = axum::serve(http, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { stopped.cancelled().await });
        let stopped = shutdown.clone();
        let ops_server = axum::serve(ops, ops_router).with_graceful_shutdown(async move { stopped.cancelled().await });
        tracing::info!(%http_addr, grpc_addr = ?grpc_addr, %ops_addr, routes = ?config.routes, "ingest listening");

        let grpc_server = grpc.map(|listener| {
            let service = VoteService::new(caster.clone(), config.max_batch_votes, admission.clone());
            let stopped = shutdown.clone();
            async move {
                let (health_reporter, health_service) = tonic_health::server::health_reporter();
                health_reporter.set_serving::<VotesServer<VoteService>>().await;
                health_reporter.set_serving::<GetInfoServer<VoteService>>().await;
                let reflection = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(bandvote_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .build_v1()?;
                tonic::transport::Server::builder()
                    .timeout(config.request_timeout)
                    .add_service(health_service)
                    .add_service(reflection)
                    .add_service(VotesServer::new(service.clone()).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES))
                    .add_service(GetInfoServer::new(service).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES))
                    // Without TCP_NODELAY a reply's last small write waits for the client's
                    // delayed ACK: 40 ms on some answers, on every streamed batch.
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                        stopped.cancelled(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        });

        let serve = async {
            let grpc_server = async {
                match grpc_server {
                    Some(grpc_server) => grpc_server.await,
                    None => Ok(()),
                }
            };
            let (http, grpc, ops) = tokio::join!(http_server, grpc_server, ops_server);
            http?;
            ops?;
            grpc
        };
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result?,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "requests still in flight after the grace period; stopping anyway");
            }
        }
        caster.publisher().flush(Duration::from_secs(2));
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// Builds and runs ingest until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Ingest::build(config).await?.run_until_stopped(shutdown).await
}

#[cfg(all(test, not(feature = "wasm-host")))]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[tokio::test]
    async fn a_build_without_the_wasm_host_refuses_a_component_and_says_what_to_do() {
        let config = Config::parse_from(["bandvote-ingest", "--routes=wasm", "--wasm-component=/srv/checker.wasm"]);
        let err = Ingest::build(config).await.err().expect("WASM_COMPONENT without the host is refused");
        let message = err.to_string();
        assert!(message.contains("WASM_COMPONENT is set (/srv/checker.wasm)"), "{message}");
        assert!(message.contains("`wasm-host` feature"), "{message}");
        assert!(message.contains("wasmtime serve"), "{message}");
    }
}
