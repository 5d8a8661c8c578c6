//! What every bandvote service shares: the configuration blocks flattened into each binary
//! ([`config`]), logs and metrics ([`telemetry`]), `/healthz`, `/readyz` and `/metrics`
//! ([`health`]), SIGINT/SIGTERM handling ([`shutdown`]) and the Kafka topics ([`topics`]).

pub mod config;
pub mod health;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
