use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = bandvote_logs_api::Config::parse();
    bandvote_ops::telemetry::init_logs(&config.telemetry);
    let shutdown = bandvote_ops::shutdown::on_signal();
    bandvote_ops::shutdown::exit_if_stuck(&shutdown, config.shutdown_grace + std::time::Duration::from_secs(5));
    bandvote_logs_api::run(config, shutdown).await
}
