use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = bandvote_chaos::Config::parse();
    match bandvote_chaos::run(&config).await {
        Ok(report) => {
            let text = report.markdown();
            print!("{text}");
            if let Some(path) = &config.report
                && let Err(err) = std::fs::write(path, &text)
            {
                eprintln!("bandvote-chaos: cannot write {}: {err}", path.display());
                return ExitCode::from(2);
            }
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("bandvote-chaos: {err:#}");
            ExitCode::from(2)
        }
    }
}
