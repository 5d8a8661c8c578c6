use bandvote_chaos::overload;
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = overload::OverloadConfig::parse();
    let outcome = overload::run(&config).await.map(|report| (report.markdown(), report.passed()));
    bandvote_chaos::conclude("bandvote-overload", outcome, config.report.as_deref())
}
