//! A short chaos run (every fault, at a lower rate, with the same exact reckoning as `dev/chaos`)
//! and a short overload run.

use std::path::{Path, PathBuf};

fn build_binaries() -> PathBuf {
    bandvote_testkit::build_service_binaries(Path::new(env!("CARGO_BIN_EXE_bandvote-chaos")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_loses_nothing_and_counts_nothing_twice() {
    let started = std::time::Instant::now();
    let bin_dir = build_binaries();
    let report = bandvote_chaos::run(&bandvote_chaos::Config::smoke(bin_dir)).await.expect("the chaos run finishes");
    let text = report.markdown();
    println!("{text}\n(the short chaos run took {:.0} s, build included)", started.elapsed().as_secs_f64());
    assert!(report.passed(), "{text}");
    assert!(report.ledger.accepted.len() > 1000, "too little load to mean anything: {text}");
    // consumer ×3, 2→5, 5→2, ingest (accepting, counted), Kafka leader (accepting, counted, in
    // sync), Redis, log store killed, log store slow.
    assert_eq!(report.recoveries.len(), 13, "{text}");
    let recovery = |fault: &str| report.recoveries.iter().find(|r| r.fault.starts_with(fault)).expect(fault);
    assert!(recovery("ingest killed").refused > 0, "ingest was down, yet no vote was refused or re-sent: {text}");
    assert!(report.leader.is_some_and(|l| l.changed()), "another node leads partition 0 after the kill: {text}");
    assert_eq!(report.replicas.len(), bandvote_chaos::REPLICAS, "{text}");
    assert!(report.replicas.iter().all(|r| r.assigned >= 1 && r.counted >= 1), "every replica counted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_ends_in_clear_refusals_and_every_accepted_vote_counts() {
    let bin_dir = build_binaries();
    let config = bandvote_chaos::overload::OverloadConfig {
        clients: 96,
        phase: std::time::Duration::from_secs(3),
        max_in_flight: 16,
        batch: 200,
        bin_dir: Some(bin_dir),
        report: None,
    };
    let report = bandvote_chaos::overload::run(&config).await.expect("the overload run finishes");
    let text = report.markdown();
    println!("{text}");
    assert!(report.passed(), "{text}");
    let answers = |phase: usize, answer: &str| report.phases[phase].answers.get(answer).copied().unwrap_or(0);
    assert!(answers(0, "200") > 0 && answers(0, "503 overloaded") > 0, "batches: some accepted, some shed: {text}");
    assert!(answers(1, "503 overloaded") > 0, "single votes past the in-flight limit are shed: {text}");
    // Ingest answers 413 as soon as it reads the Content-Length and closes the connection; a client
    // still sending its megabyte may see the connection reset before it reads the answer.
    let large = &report.phases[2].answers;
    let closed = large.get("no answer (connection closed)").copied().unwrap_or(0);
    assert!(large.keys().all(|a| a == "413 body_too_large" || a == "no answer (connection closed)"), "{text}");
    assert!(answers(2, "413 body_too_large") > 9 * closed, "{text}");
    assert!(answers(3, "429 rate_limited") > 0, "{text}");
}
