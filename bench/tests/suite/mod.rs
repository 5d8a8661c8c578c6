//! The suite's smoke profile: every phase runs against real private servers and the counts are
//! exact at the end.

use std::path::{Path, PathBuf};

use bandvote_bench::suite::{Profile, SuiteConfig, run};

fn build_binaries() -> PathBuf {
    bandvote_testkit::build_service_binaries(Path::new(env!("CARGO_BIN_EXE_bandvote-bench-suite")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_smoke_profile_measures_every_phase_and_counts_exactly() {
    let _alone = crate::HEAVY.lock().await;
    let bin_dir = build_binaries();
    let out = std::env::temp_dir().join(format!("bandvote-bench-smoke-{}", std::process::id()));
    // dev/test sets BANDVOTE_LOCUST to the Locust of its venv.
    let locust = std::env::var_os("BANDVOTE_LOCUST").map(Into::into);
    if locust.is_none() {
        eprintln!("BANDVOTE_LOCUST is not set: Locust is not run (dev/test sets it)");
    }
    let config = SuiteConfig {
        profile: Profile::Smoke,
        bin_dir: Some(bin_dir),
        out: out.clone(),
        wasm_component: Some(bandvote_testkit::wasm_checker()),
        locust: locust.clone(),
        locustfile: Path::new(env!("CARGO_MANIFEST_DIR")).join("../locust/locustfile.py"),
        rounds: None,
        backlog: None,
        sustain: None,
        charts_from: None,
    };
    let report = run(&config).await.expect("the smoke run finishes");
    let text = report.markdown();
    println!("{text}");

    // Every route and its no-op twin found a capacity in some round; the Wasm route has no twin.
    for variant in ["http-vote", "http-vote (no-op)", "grpc-cast", "grpc-cast (no-op)", "wasm-vote"] {
        assert!(report.capacity(variant).is_some_and(|c| c.median > 0.0), "no capacity for {variant}: {text}");
    }
    assert!(report.capacity("wasm-vote (no-op)").is_none(), "{text}");
    assert_eq!(report.latency.len(), 5 * bandvote_bench::LATENCY_FRACTIONS.len(), "{text}");
    for peer in ["rdkafka producer", "insert_many", "kcat -P", "redis-benchmark SET", "h2load http-vote"] {
        assert!(report.peer(peer).is_some_and(|p| p.median > 0.0), "peer {peer} did not run: {text}");
    }
    assert!(report.not_run.iter().all(|line| line.starts_with("locust")), "{text}");
    assert_eq!(report.locust.is_some(), locust.is_some(), "{text}");

    // The backlog was caught up and the pipeline counted every accepted vote exactly once.
    let catch_up = &report.catchups[0];
    assert!(catch_up.counted_per_s > 0.0 && catch_up.logged_per_s > 0.0, "{text}");
    let reckoning = report.reckoning.as_ref().expect("a reckoning");
    assert!(reckoning.exact(), "{text}");
    assert!(reckoning.accepted > catch_up.backlog && reckoning.sampled > 0, "{text}");
    let sustained = report.sustained.as_ref().expect("a sustained run");
    assert!(sustained.ok > 0 && sustained.traced > 0 && sustained.unseen == 0, "{text}");
    assert!(report.e2e.iter().any(|step| step.label == "50%" && step.visible_p99_ms.is_some()), "{text}");

    for file in ["report.md", "report.json", "capacity.svg", "latency.svg", "end-to-end.svg", "catch-up.svg"] {
        let body = std::fs::read_to_string(out.join(file)).unwrap_or_default();
        assert!(body.len() > 200, "{file} is missing or empty");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["reckoning"]["counted"], reckoning.counted);
    let _ = std::fs::remove_dir_all(&out);
}
