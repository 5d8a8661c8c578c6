use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = bandvote_consumer::result::ResultConfig::parse();
    match bandvote_consumer::result::run(&config).await {
        Ok(result) => {
            let text = serde_json::to_string_pretty(&result).expect("a result serializes");
            println!("{text}");
            if let Some(path) = &config.out
                && let Err(err) = std::fs::write(path, format!("{text}\n"))
            {
                eprintln!("bandvote-result: cannot write {}: {err}", path.display());
                return ExitCode::from(2);
            }
            if result.redis_agrees { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("bandvote-result: {err:#}");
            ExitCode::from(2)
        }
    }
}
