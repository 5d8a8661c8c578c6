//! The audit command against a real pipeline: it agrees after exact counting, names what differs
//! when a store is tampered with, and rebuilds Redis exactly after Redis lost its data, part of it,
//! or nothing (long after the re-send window).

use std::time::Duration;

use bandvote_consumer::audit::{self, AuditConfig};
use clap::Parser;
use mongodb::bson::doc;

use super::{Pipeline, json_vote, send_load};

impl Pipeline {
    pub(crate) fn audit_config(&self, extra: &[&str]) -> AuditConfig {
        let args = [
            "bandvote-audit".to_owned(),
            format!("--kafka-brokers={}", self.services.kafka_brokers),
            format!("--kafka-topic={}", self.topic),
            format!("--kafka-group={}", self.group),
            format!("--redis-url={}", self.services.redis_url),
            format!("--redis-key-prefix={}", self.prefix),
            format!("--mongodb-uri={}", self.services.mongodb_uri),
            format!("--mongodb-database={}", self.database),
        ];
        AuditConfig::parse_from(args.into_iter().chain(extra.iter().map(|s| (*s).to_owned())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_agrees_names_differences_and_rebuilds_redis_after_a_flush() {
    let pipeline = Pipeline::start("audit").await;
    let consumer = pipeline.consume_in_process().await;
    let expected = send_load(&pipeline, 12, 25, Duration::ZERO).await.expect("the load finished");
    // The same vote id twice: Kafka holds it twice, the log and Redis once.
    let mut again = json_vote(7);
    again["vote_id"] = "audit-repeat-1".into();
    for _ in 0..2 {
        let (status, reply) = pipeline.post("/votes", &again).await;
        assert_eq!(status, 200, "{reply}");
    }
    let total = expected.total() + 1;
    let tallies = pipeline.tallies_when_total(total, Duration::from_secs(60)).await;
    pipeline.logged_when_count(total, Duration::from_secs(60)).await;
    consumer.stop().await;

    let report = audit::run(&pipeline.audit_config(&["--replay-kafka"])).await.expect("the audit runs");
    assert!(report.agrees(), "{report}");
    assert_eq!(report.log.counts.total, total);
    assert_eq!(report.redis.total, tallies.total);
    assert_eq!(report.log.counts.bands, tallies.by_band);
    let kafka = report.kafka.as_ref().expect("the topic was replayed");
    assert_eq!((kafka.records, kafka.counts.total, kafka.repeated), (total + 1, total, 1), "{report}");

    // One vote counted twice in Redis and one logged vote gone: both named.
    let keys = bandvote_domain::RedisKeys::new(&pipeline.prefix);
    let mut redis = redis::Client::open(pipeline.services.redis_url.as_str())
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let (band, ..) = bandvote_testkit::vote(3);
    let _: i64 =
        redis::cmd("HINCRBY").arg(keys.by_band()).arg(band).arg(1).query_async(&mut redis).await.expect("HINCRBY");
    let log = mongodb::Client::with_uri_str(&pipeline.services.mongodb_uri).await.expect("MongoDB URI");
    let votes = log.database(&pipeline.database).collection::<mongodb::bson::Document>("votes");
    votes.delete_one(doc! {"_id": "audit-repeat-1"}).await.expect("delete");
    let report = audit::run(&pipeline.audit_config(&["--replay-kafka"])).await.expect("the audit runs");
    assert!(!report.agrees());
    let named: Vec<String> = report.redis_differences.iter().map(|d| format!("{} {}", d.what, d.key)).collect();
    assert!(named.contains(&"total ".to_owned()), "{report}");
    assert!(named.contains(&format!("band {band}")), "{report}");
    assert!(named.contains(&format!("leaderboard {band}")), "{report}");
    let kafka_named: Vec<&str> = report.kafka_differences.iter().map(|d| d.what).collect();
    assert!(kafka_named.contains(&"total"), "the log lost a vote Kafka holds: {report}");

    // Redis loses everything: the audit sees it, the rebuild counts every logged vote once.
    bandvote_testkit::clear_redis(&pipeline.services.redis_url, &pipeline.prefix).await;
    let report = audit::run(&pipeline.audit_config(&[])).await.expect("the audit runs");
    assert_eq!(report.redis.total, 0);
    assert!(!report.agrees());
    let report = audit::run(&pipeline.audit_config(&["--rebuild"])).await.expect("the rebuild runs");
    let rebuilt = report.rebuilt.as_ref().expect("rebuilt");
    assert_eq!(rebuilt.votes, (total - 1) as i64, "{report}");
    assert_eq!(rebuilt.positions.len(), 6, "every partition gets its position back from the group's commits: {report}");
    assert!(report.agrees(), "{report}");
    let rebuilt = bandvote_testkit::read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    let mut without_deleted = tallies.clone();
    without_deleted.total -= 1;
    let (deleted_band, deleted_album, ..) = bandvote_testkit::vote(7);
    *without_deleted.by_band.get_mut(deleted_band).expect("band") -= 1;
    *without_deleted.leaderboard.get_mut(deleted_band).expect("band") -= 1;
    let album = bandvote_domain::RedisKeys::album_field(deleted_band, deleted_album);
    *without_deleted.by_album.get_mut(&album).expect("album") -= 1;
    *without_deleted.by_route.get_mut("http").expect("route") -= 1;
    without_deleted.per_second_sum -= 1;
    // Averages are recomputed in another order; only the deleted vote's album may move.
    for (field, average) in &tallies.rank_avg {
        let now = rebuilt.rank_avg[field];
        assert!(*field == album || (now - average).abs() < 1e-9, "{field}: average {average} rebuilt as {now}");
    }
    without_deleted.rank_avg = rebuilt.rank_avg.clone();
    assert_eq!(rebuilt, without_deleted, "the rebuilt tallies are the counted ones less the deleted vote");

    // A second rebuild finds nothing missing and changes nothing.
    let report = audit::run(&pipeline.audit_config(&["--rebuild"])).await.expect("the rebuild runs");
    assert_eq!(report.rebuilt, Some(Default::default()), "{report}");
    assert_eq!(bandvote_testkit::read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await, rebuilt);
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_long_after_the_resend_window_changes_nothing_on_an_intact_redis() {
    let pipeline = Pipeline::start("rebuild-aged").await;
    // A 2 s window: its generations last 667 ms and expire 2 s after they end.
    let consumer = pipeline.consume_in_process_with(&["--resend-window=2s"]).await;
    let expected = send_load(&pipeline, 8, 25, Duration::from_millis(50)).await.expect("the load finished");
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(60)).await;
    pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    // Every re-send set has expired: no vote id is remembered any more.
    let mut redis = pipeline.redis().await;
    let resend = format!("{}:{{{}/*}}:resend:*", pipeline.prefix, pipeline.topic);
    bandvote_testkit::wait_for("the re-send sets to expire", Duration::from_secs(20), || {
        let (mut redis, resend) = (redis.clone(), resend.clone());
        async move {
            let left: Vec<String> =
                redis::cmd("KEYS").arg(&resend).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            if left.is_empty() { Ok(()) } else { Err(format!("{} sets left", left.len())) }
        }
    })
    .await;
    let positions: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{{}/*}}:position", pipeline.prefix, pipeline.topic))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(!positions.is_empty(), "the positions never expire");

    let report = audit::run(&pipeline.audit_config(&["--rebuild"])).await.expect("the rebuild runs");
    assert_eq!(report.rebuilt, Some(Default::default()), "nothing to add or remove: {report}");
    assert!(report.agrees(), "{report}");
    assert_eq!(bandvote_testkit::read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await, tallies);
    consumer.stop().await;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_votes_are_counted_restores_exactly_the_deleted_tallies() {
    let pipeline = Pipeline::start("rebuild-part").await;
    let consumer = pipeline.consume_in_process().await;
    let first = send_load(&pipeline, 6, 25, Duration::ZERO).await.expect("the load finished");
    pipeline.tallies_when_total(first.total(), Duration::from_secs(60)).await;
    pipeline.logged_when_count(first.total(), Duration::from_secs(60)).await;

    // Part of the tallies is lost: one band, every album and the per-second split.
    let keys = bandvote_domain::RedisKeys::new(&pipeline.prefix);
    let mut redis = pipeline.redis().await;
    let (band, ..) = bandvote_testkit::vote(2);
    let lost_band: u64 = redis::cmd("HGET").arg(keys.by_band()).arg(band).query_async(&mut redis).await.expect("HGET");
    assert!(lost_band > 0);
    let _: () = redis::pipe()
        .atomic()
        .hdel(keys.by_band(), band)
        .del(keys.by_album())
        .del(keys.per_second())
        .query_async(&mut redis)
        .await
        .expect("delete part of the tallies");
    // More votes arrive and are counted while the rebuild runs.
    let more = send_load(&pipeline, 20, 10, Duration::from_millis(50));
    let report = audit::run(&pipeline.audit_config(&["--rebuild"])).await.expect("the rebuild runs");
    let rebuilt = report.rebuilt.clone().expect("rebuilt");
    assert_eq!(rebuilt.votes, 0, "the total was not lost: {rebuilt}");
    assert!(rebuilt.counters > 0, "{rebuilt}");
    let more = more.await.expect("the load finished");

    let mut expected = first;
    expected.extend(more);
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(60)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    expected.check(&tallies, &logged);
    consumer.stop().await;
    let report = audit::run(&pipeline.audit_config(&[])).await.expect("the audit runs");
    assert!(report.agrees(), "{report}");
    pipeline.finish().await;
}
