//! The generator against small servers of its own, the whole suite's smoke profile against
//! private Kafka, Redis, FerretDB, ingest and a consumer, and the read-latency benchmark at a tiny
//! scale.

mod logs;
mod open_loop;
mod suite;

/// Held by the tests that run whole private stacks under load (the suite's smoke profile, the
/// read-latency benchmark), so that they do not share the machine's cores with each other: what
/// they measure is judged.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
