use std::process::ExitCode;

use bandvote_bench::{suite, suite_report};
use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = suite::SuiteConfig::parse();
    let outcome = match &config.charts_from {
        Some(json) => suite_report::redraw(json, &config.out)
            .map(|()| eprintln!("bench: charts of {} in {}", json.display(), config.out.display())),
        None => suite::run(&config).await.map(|report| {
            print!("{}", report.markdown());
            eprintln!("bench: report, JSON and charts in {}", config.out.display());
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bandvote-bench-suite: {error:#}");
            ExitCode::FAILURE
        }
    }
}
