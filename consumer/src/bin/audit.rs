use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = bandvote_consumer::audit::AuditConfig::parse();
    match bandvote_consumer::audit::run(&config).await {
        Ok(report) => {
            print!("{report}");
            if report.agrees() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("bandvote-audit: {err:#}");
            ExitCode::from(2)
        }
    }
}
