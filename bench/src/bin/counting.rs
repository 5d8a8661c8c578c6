use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = bandvote_bench::counting::CountingConfig::parse();
    match bandvote_bench::counting::run(&config).await {
        Ok((_, report)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bandvote-bench-counting: {error:#}");
            ExitCode::FAILURE
        }
    }
}
