use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = bandvote_bench::Config::parse();
    let outcome = async {
        let report = bandvote_bench::run(&config).await?;
        print!("{}", report.markdown());
        if let Some(path) = &config.json {
            let json = serde_json::to_vec_pretty(&report)?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
        anyhow::Ok(())
    };
    match outcome.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bandvote-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
