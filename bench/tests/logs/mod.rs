//! The read-latency benchmark at a tiny scale: a private secantus-mdb, 2 000 votes, a few requests of
//! every kind against a debug logs API, every answer checked.

use std::{path::Path, time::Duration};

use bandvote_bench::logs::{LogsConfig, Query, Store, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_latency_bench_measures_every_query_at_each_checkpoint() {
    let _alone = crate::HEAVY.lock().await;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "bandvote-logs-api"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cannot build the logs API");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_bandvote-bench-logs")).parent().expect("a folder").to_path_buf();
    let config = LogsConfig {
        store: Store::Secantus,
        votes: 2_000,
        at: vec![1_000],
        rate: 200.0,
        concurrency: 2,
        duration: Duration::from_secs(2),
        lead_in: Duration::from_millis(500),
        requests: 16,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
        bin_dir: Some(bin_dir),
        console: None,
        // A debug build on a loaded machine may take more than the default 3 s.
        api_args: vec!["--query-timeout=10s".into()],
    };
    let report = run(&config).await.expect("the run finishes");
    let text = report.markdown();
    println!("{text}");
    assert_eq!(report.checkpoints.len(), 2, "{text}");
    assert!(report.not_reached.is_empty(), "{text}");
    let first = &report.checkpoints[0];
    assert!(first.votes_at_start >= 1_000 && first.seed_per_s.is_some_and(|r| r > 0.0), "{text}");
    assert!(report.checkpoints[1].votes_at_start >= 2_000, "{text}");
    for checkpoint in &report.checkpoints {
        for kind in [Query::Latest, Query::Band, Query::Tallies] {
            let latencies = checkpoint.queries.get(&kind).unwrap_or_else(|| panic!("no {kind:?}: {text}"));
            assert!(latencies.ok() > 0, "{kind:?}: {text}");
            assert!(latencies.errors.keys().all(|e| !e.starts_with("wrong answer")), "{kind:?}: {text}");
        }
    }
}
