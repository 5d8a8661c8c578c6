use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = bandvote_ingest::Config::parse();
    bandvote_ops::telemetry::init_logs(&config.telemetry);
    bandvote_ingest::run(config, bandvote_ops::shutdown::on_signal()).await
}
