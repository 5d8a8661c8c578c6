//! What every bandvote service shares: the configuration blocks flattened into each binary
//! ([`config`]), logs and metrics ([`telemetry`]), `/healthz`, `/readyz` and `/metrics`
//! ([`health`]), the JSON error body ([`reply`]), SIGINT/SIGTERM handling ([`shutdown`]) and,
//! with the `kafka` feature, the Kafka settings, how a client authenticates ([`kafka_security`])
//! and the topics ([`topics`]); with the `redis` feature, the reader of the consumers' Redis
//! tallies ([`tallies`]).

pub mod config;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka_security;
pub mod reply;
pub mod shutdown;
#[cfg(feature = "redis")]
pub mod tallies;
pub mod telemetry;
#[cfg(feature = "kafka")]
pub mod topics;
