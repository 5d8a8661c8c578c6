//! The ops port: `/readyz` and `/metrics` are there and not on the vote port, and a flood of
//! `/readyz` asks Kafka at most once a second.

use std::time::{Duration, Instant};

use bandvote_testkit::{BANDS, unique, wait_for};
use serde_json::{Value, json};

use super::{Ingest, IngestProcess, metrics_text};

/// The value of an unlabelled counter in Prometheus text, 0 when absent.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_are_on_the_ops_port_only() {
    let ingest = Ingest::start("ops-port", &[]).await;
    assert_ne!(ingest.ops.port(), ingest.http.port());
    for path in ["/readyz", "/metrics"] {
        let response = ingest.client.get(format!("http://{}{path}", ingest.http)).send().await.expect("answers");
        assert_eq!(response.status().as_u16(), 404, "{path} is not on the vote port");
        let reply: Value = response.json().await.expect("a JSON error");
        assert_eq!(reply["error"]["code"], "not_found");
    }
    let vote_port_health = ingest.client.get(format!("http://{}/healthz", ingest.http)).send().await.expect("answers");
    assert_eq!(vote_port_health.status().as_u16(), 200, "the load balancer's health check stays");

    let get = |path: &str| ingest.client.get(format!("http://{}{path}", ingest.ops)).send();
    // Ready once Kafka has the new topic in its metadata.
    wait_for("ingest to be ready", Duration::from_secs(15), || async {
        let answer = get("/readyz").await.map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        match answer.json::<Value>().await.map_err(|e| e.to_string())? {
            reply if status == 200 && reply == json!({"status": "ready"}) => Ok(()),
            reply => Err(format!("{status} {reply}")),
        }
    })
    .await;
    assert_eq!(get("/healthz").await.expect("answers").status().as_u16(), 200);
    let metrics = metrics_text(&ingest.client, &format!("http://{}", ingest.ops)).await;
    assert!(metrics.contains("bandvote_ingest_readiness_checks_total"), "{metrics}");
    let vote = json!({"name": BANDS[0].0, "album": BANDS[0].1[0], "year": "1990", "rank": "9"});
    let vote_on_ops = ingest.client.post(format!("http://{}/votes", ingest.ops)).json(&vote).send().await;
    assert_eq!(vote_on_ops.expect("answers").status().as_u16(), 404, "the ops port takes no votes");
    let wrong_method = ingest.client.post(format!("http://{}/readyz", ingest.ops)).send().await.expect("answers");
    assert_eq!(wrong_method.status().as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readiness_checks_asks_kafka_at_most_once_a_second() {
    // A process of its own, so that its metrics count only the checks of this test.
    let ingest = IngestProcess::start(&format!("votes-{}", unique("ready-flood"))).await;
    let (client, ops) = (&ingest.client, &ingest.ops);
    let before = counter(&metrics_text(client, ops).await, "bandvote_ingest_readiness_checks_total");

    // 300 checks over about 1.5 s, 30 at a time.
    let started = Instant::now();
    for _ in 0..10 {
        let round: Vec<_> = (0..30).map(|_| client.get(format!("{ops}/readyz")).send()).collect();
        for answer in futures::future::join_all(round).await {
            assert_eq!(answer.expect("answers").status().as_u16(), 200);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let elapsed = started.elapsed();
    let asked = counter(&metrics_text(client, ops).await, "bandvote_ingest_readiness_checks_total") - before;
    // One fresh answer per second at most, plus the one that may be under way when the flood starts.
    let most = elapsed.as_secs_f64().floor() + 2.0;
    assert!((1.0..=most).contains(&asked), "300 readiness checks in {elapsed:?} asked Kafka {asked} times");
}
