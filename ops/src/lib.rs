//! What every bandvote service shares: the configuration blocks flattened into each binary
//! ([`config`]), logs and metrics ([`telemetry`]), `/healthz`, `/readyz` and `/metrics`
//! ([`health`]), the JSON error body ([`reply`]), SIGINT/SIGTERM handling ([`shutdown`]) and,
//! with the `kafka` feature, the Kafka settings and topics ([`topics`]).

pub mod config;
pub mod health;
pub mod reply;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "kafka")]
pub mod topics;
