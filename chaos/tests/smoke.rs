//! A short chaos run: every fault once at a lower rate, with the same exact reckoning as the full
//! run (`dev/chaos`).

use std::{path::Path, process::Command};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_loses_nothing_and_counts_nothing_twice() {
    // The run starts ingest and the consumers as processes: build them in this profile.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "bandvote-ingest", "-p", "bandvote-consumer"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cannot build ingest and the consumer");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_bandvote-chaos")).parent().expect("a folder").to_path_buf();
    let report = bandvote_chaos::run(&bandvote_chaos::Config::smoke(bin_dir)).await.expect("the chaos run finishes");
    let text = report.markdown();
    println!("{text}");
    assert!(report.passed(), "{text}");
    assert!(report.ledger.accepted.len() > 1000, "too little load to mean anything: {text}");
    assert!(report.ledger.refused > 0, "Kafka was down, yet no vote was refused: {text}");
    assert_eq!(report.recoveries.len(), 10, "{text}");
}
