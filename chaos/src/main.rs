use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = bandvote_chaos::Config::parse();
    let outcome = bandvote_chaos::run(&config).await.map(|report| (report.markdown(), report.passed()));
    bandvote_chaos::conclude("bandvote-chaos", outcome, config.report.as_deref())
}
