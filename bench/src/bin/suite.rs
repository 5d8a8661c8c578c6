use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = bandvote_bench::suite::SuiteConfig::parse();
    match bandvote_bench::suite::run(&config).await {
        Ok(report) => {
            print!("{}", report.markdown());
            eprintln!("bench: report, JSON and charts in {}", config.out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bandvote-bench-suite: {error:#}");
            ExitCode::FAILURE
        }
    }
}
