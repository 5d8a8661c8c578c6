//! The generator against small servers of its own, and the whole suite's smoke profile against
//! private Kafka, Redis, FerretDB, ingest and a consumer.

mod open_loop;
mod suite;
