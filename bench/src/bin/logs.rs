use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = bandvote_bench::logs::LogsConfig::parse();
    match bandvote_bench::logs::run(&config).await {
        Ok(report) => {
            print!("{}", report.markdown());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bandvote-bench-logs: {error:#}");
            ExitCode::FAILURE
        }
    }
}
