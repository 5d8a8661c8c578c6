use clap::Parser;

/// mimalloc instead of the system allocator: under load the Kafka client's threads and the
/// runtime's workers allocate and free concurrently, where glibc's malloc spent about a third of
/// ingest's CPU (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = bandvote_ingest::Config::parse();
    bandvote_ops::telemetry::init_logs(&config.telemetry);
    let shutdown = bandvote_ops::shutdown::on_signal();
    bandvote_ops::shutdown::exit_if_stuck(&shutdown, config.shutdown_grace + std::time::Duration::from_secs(5));
    bandvote_ingest::run(config, shutdown).await
}
