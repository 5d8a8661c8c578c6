//! The generator against small servers of its own, the whole suite's smoke profile against
//! private Kafka, Redis, FerretDB, ingest and a consumer, and the read-latency benchmark at a tiny
//! scale.

mod logs;
mod open_loop;
mod suite;
