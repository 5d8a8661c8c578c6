//! Faults aimed at the moments where a counting bug would hide: a consumer killed with SIGKILL
//! between counting and logging, or between receiving and counting; Redis killed and losing its
//! last writes; consumers scaled so that every replica must take part; a Redis too small for the
//! re-send window. Each test checks that the fault did what it was meant to (the kill landed in
//! the window, the records were delivered again, Redis went back) before it checks exact counts.

use std::{collections::BTreeMap, time::Duration};

use bandvote_domain::RedisKeys;
use bandvote_testkit::{
    Services, VoteLog, answers_ok, read_tallies,
    servers::{Kind, PrivateServer, SlowProxy, free_port},
    unique, wait_for,
};
use rdkafka::consumer::BaseConsumer;

use super::{Pipeline, Replica, counted, progress_beyond, send_load};

/// The sum of every series of the metric `name` whose labels contain `labels`, from the consumer
/// whose metrics are on `port` (`None` while it does not answer or has no such series).
async fn metric(port: u16, name: &str, labels: &str) -> Option<f64> {
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    bandvote_testkit::metric(&page, name, labels)
}

/// Waits until the metric reaches `at_least`, and returns it.
async fn metric_at_least(port: u16, name: &str, labels: &str, at_least: f64) -> f64 {
    wait_for(&format!("{name}{{{labels}}} to reach {at_least} on :{port}"), Duration::from_secs(60), || async {
        match metric(port, name, labels).await {
            Some(value) if value >= at_least => Ok(value),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn wait_ready(port: u16) {
    let (client, ready) = (reqwest::Client::new(), format!("http://127.0.0.1:{port}/readyz"));
    wait_for(&format!("the consumer on :{port} to be ready"), Duration::from_secs(60), || answers_ok(&client, &ready))
        .await
}

impl Pipeline {
    /// Every partition's counting position in Redis.
    async fn positions(&self) -> BTreeMap<i32, i64> {
        let keys = RedisKeys::new(&self.prefix);
        let mut redis = self.redis().await;
        let mut positions = BTreeMap::new();
        for partition in 0..6 {
            let next: Option<i64> = redis::cmd("HGET")
                .arg(keys.position(&self.topic, partition))
                .arg("next")
                .query_async(&mut redis)
                .await
                .expect("HGET");
            if let Some(next) = next {
                positions.insert(partition, next);
            }
        }
        positions
    }

    /// The consumer group's committed offset per partition.
    fn committed(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.services.kafka_brokers)
            .set("group.id", &self.group)
            .set("broker.address.family", "v4")
            .create()
            .expect("a Kafka client");
        bandvote_ops::topics::committed(&consumer, &self.topic, &[0, 1, 2, 3, 4, 5], Duration::from_secs(10))
            .expect("committed offsets")
    }
}

/// `host:port` of a `mongodb://` or `redis://` URL.
fn address(url: &str) -> String {
    url.split("://").nth(1).unwrap_or(url).split(['/', '?']).next().unwrap_or(url).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_after_counting_and_before_logging_counts_and_logs_every_vote_once() {
    let mut pipeline = Pipeline::start("kill-unlogged").await;
    let direct = pipeline.services.mongodb_uri.clone();
    let proxy = SlowProxy::start(address(&direct)).await;
    pipeline.services.mongodb_uri = format!("mongodb://{}/?directConnection=true", proxy.addr);
    let port = free_port();
    let mut consumer = pipeline.spawn_consumer_on(port, &[]);
    wait_ready(port).await;

    proxy.stall(true);
    let expected = send_load(&pipeline, 10, 20, Duration::from_millis(20)).await.expect("the load finished");
    pipeline.tallies_when_total(expected.total(), Duration::from_secs(60)).await;
    let log = VoteLog::open(&direct, &pipeline.database).await;
    assert_eq!(log.count().await, 0, "nothing is logged while the log store is stalled");
    let (positions, committed) = (pipeline.positions().await, pipeline.committed());
    assert_eq!(positions.values().sum::<i64>() as u64, expected.total(), "Redis's positions are past every vote");
    assert!(
        positions.iter().all(|(p, next)| committed.get(p).is_none_or(|c| c < next)),
        "the group's commits are behind what Redis counted: positions {positions:?}, committed {committed:?}"
    );

    consumer.kill();
    // Whatever the killed replica had on its way to the log store dies with it.
    proxy.sever();
    proxy.stall(false);
    assert_eq!(log.count().await, 0, "the killed replica logged nothing");
    let port = free_port();
    let mut consumer = pipeline.spawn_consumer_on(port, &[]);
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    let redelivered =
        metric_at_least(port, "bandvote_consumer_records_redelivered_total", "", expected.total() as f64).await;
    assert_eq!(redelivered as u64, expected.total(), "the restarted replica got every record again");
    assert_eq!(metric(port, "bandvote_consumer_votes_counted_total", "").await.unwrap_or(0.0), 0.0);
    let tallies = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    expected.check(&tallies, &logged);
    consumer.kill();
    pipeline.services.mongodb_uri = direct;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_after_receiving_and_before_counting_counts_every_vote_once() {
    let mut pipeline = Pipeline::start("kill-uncounted").await;
    let direct = pipeline.services.redis_url.clone();
    let proxy = SlowProxy::start(address(&direct)).await;
    pipeline.services.redis_url = format!("redis://{}", proxy.addr);
    let port = free_port();
    let mut consumer = pipeline.spawn_consumer_on(port, &[]);
    wait_ready(port).await;
    let first = send_load(&pipeline, 1, 4, Duration::ZERO).await.expect("the load finished");
    pipeline.tallies_when_total(first.total(), Duration::from_secs(30)).await;

    proxy.stall(true);
    let expected = send_load(&pipeline, 10, 20, Duration::from_millis(20)).await.expect("the load finished");
    // The counting loop holds the batch it received until Redis answers.
    let received =
        metric_at_least(port, "bandvote_consumer_records_received_total", "", (first.total() + 1) as f64).await;
    assert_eq!(read_tallies(&direct, &pipeline.prefix).await.total, first.total(), "Redis counted none of them");
    eprintln!("kill-uncounted: {} records received and not counted at the kill", received as u64 - first.total());

    consumer.kill();
    // The counting request the killed replica had sent dies with it, unanswered.
    proxy.sever();
    proxy.stall(false);
    assert_eq!(read_tallies(&direct, &pipeline.prefix).await.total, first.total(), "the killed replica counted none");
    let port = free_port();
    let mut consumer = pipeline.spawn_consumer_on(port, &[]);
    let before = first.total();
    let mut all = expected;
    all.extend(first);
    let tallies = pipeline.tallies_when_total(all.total(), Duration::from_secs(60)).await;
    let logged = pipeline.logged_when_count(all.total(), Duration::from_secs(60)).await;
    let counted_now = metric_at_least(port, "bandvote_consumer_votes_counted_total", "", 1.0).await;
    assert_eq!(
        counted_now as u64,
        all.total() - before,
        "the restarted replica counted what the killed one had received"
    );
    metric_at_least(port, "bandvote_consumer_records_received_total", "", counted_now).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read_tallies(&direct, &pipeline.prefix).await, tallies, "nothing counted twice later");
    all.check(&tallies, &logged);
    consumer.kill();
    pipeline.services.redis_url = direct;
    pipeline.finish().await;
}

/// The newest incremental append-only file of a Redis (Redis 7 keeps `appendonlydir/`).
fn newest_aof(redis: &PrivateServer) -> std::path::PathBuf {
    let dir = redis.dir().join("appendonlydir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the append-only folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files.pop().unwrap_or_else(|| panic!("no incremental append-only file in {}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_after_losing_its_last_second_is_counted_again_from_kafka_with_no_manual_step() {
    let mut redis = PrivateServer::start(Kind::Redis);
    let id = unique("redis-loss");
    let services = Services { redis_url: redis.url(), ..Services::local() };
    let pipeline = Pipeline::start_with(&id, services, format!("votes-{id}"), &[]).await;
    let port = free_port();
    let mut consumer = pipeline.spawn_consumer_on(port, &[]);
    let load = send_load(&pipeline, 150, 20, Duration::from_millis(100));
    let seen = progress_beyond(&pipeline, 0).await;

    // Everything Redis writes after this moment is "its last second": the disk will not keep it.
    let aof = newest_aof(&redis);
    let kept = std::fs::metadata(&aof).expect("the AOF").len();
    let positions_kept = pipeline.positions().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    progress_beyond(&pipeline, seen + 20).await;
    let counted_at_kill = counted(&pipeline).await;
    redis.kill();
    let written = std::fs::metadata(&aof).expect("the AOF").len();
    assert!(written > kept, "Redis wrote counts in its last second ({kept} → {written} bytes)");
    std::fs::OpenOptions::new().write(true).open(&aof).expect("the AOF").set_len(kept).expect("truncate");
    redis.restart();
    let positions_restored = pipeline.positions().await;
    assert!(
        positions_restored.values().sum::<i64>() < counted_at_kill as i64
            || metric(port, "bandvote_consumer_position_seeks_total", "redis_behind").await.is_some(),
        "Redis came back without its last second: positions {positions_restored:?} (kept {positions_kept:?})"
    );

    let expected = load.await.expect("the load finished");
    assert!(counted_at_kill < expected.total(), "the kill came before everything was counted");
    let seeks = metric_at_least(port, "bandvote_consumer_position_seeks_total", "redis_behind", 1.0).await;
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(90)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await,
        tallies,
        "nothing counted twice later"
    );
    expected.check(&tallies, &logged);
    eprintln!("redis-loss: {counted_at_kill} counted at the kill, {seeks} partitions read again from Redis's position");
    consumer.kill();
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_scaled_from_2_to_5_and_back_all_count_and_the_counts_are_exact() {
    let pipeline = Pipeline::start("scale-every").await;
    let load = send_load(&pipeline, 200, 20, Duration::from_millis(100));
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let mut consumers: Vec<Replica> = ports[..2].iter().map(|&port| pipeline.spawn_consumer_on(port, &[])).collect();
    let seen = progress_beyond(&pipeline, 0).await;
    consumers.extend(ports[2..].iter().map(|&port| pipeline.spawn_consumer_on(port, &[])));
    // Every one of the five holds partitions and counts votes from them, by its own metrics.
    for &port in &ports {
        wait_for(&format!("the replica on :{port} to hold partitions and count"), Duration::from_secs(60), || async {
            let assigned = metric(port, "bandvote_consumer_assigned_partitions", "").await.unwrap_or(0.0);
            let counted = metric(port, "bandvote_consumer_votes_counted_total", "").await.unwrap_or(0.0);
            let since = metric(port, "bandvote_consumer_records_received_total", "").await.unwrap_or(0.0);
            if assigned >= 1.0 && counted > 0.0 {
                Ok(())
            } else {
                Err(format!("{assigned} partitions, {counted} counted of {since}"))
            }
        })
        .await;
    }
    let seen = progress_beyond(&pipeline, seen).await;
    for mut consumer in consumers.drain(2..) {
        let status = consumer.terminate();
        assert!(status.success(), "a consumer stopped by SIGTERM exits cleanly, got {status}");
    }
    for &port in &ports[..2] {
        wait_for("the two left to hold every partition", Duration::from_secs(60), || async {
            let assigned = metric(port, "bandvote_consumer_assigned_partitions", "").await.unwrap_or(0.0);
            if assigned >= 3.0 { Ok(()) } else { Err(format!("{assigned} partitions")) }
        })
        .await;
    }
    progress_beyond(&pipeline, seen).await;
    let expected = load.await.expect("the load finished");
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(90)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(60)).await;
    expected.check(&tallies, &logged);
    for mut consumer in consumers {
        assert!(consumer.terminate().success());
    }
    pipeline.finish().await;
}

/// Redis's `INFO memory` and `INFO stats` fields.
async fn redis_info(redis: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO").arg("memory").arg("stats").query_async(redis).await.expect("INFO");
    text.lines().filter_map(|line| line.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_too_small_for_the_resend_window_evicts_resend_memory_and_never_a_count() {
    const MAXMEMORY: u64 = 4 * 1024 * 1024;
    let redis = PrivateServer::start_with(Kind::Redis, &["--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl"]);
    let id = unique("redis-full");
    let services = Services { redis_url: redis.url(), ..Services::local() };
    let pipeline = Pipeline::start_with(&id, services, format!("votes-{id}"), &[]).await;
    let port = free_port();
    // Generations of 10 s: the whole run fits in the window, so nothing expires, it can only be evicted.
    let window = Duration::from_secs(30);
    let mut consumer = pipeline.spawn_consumer_on(port, &["--resend-window=30s"]);
    let mut info = pipeline.redis().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut most = 0u64;
            while !stop.is_cancelled() {
                let used: u64 = redis_info(&mut info).await["used_memory"].parse().expect("used_memory");
                most = most.max(used);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        }
    });
    // About 80 bytes of re-send memory per vote: 100 000 votes need about 8 MB, twice what there is.
    let expected = send_load(&pipeline, 200, 500, Duration::from_millis(10)).await.expect("the load finished");
    let tallies = pipeline.tallies_when_total(expected.total(), Duration::from_secs(120)).await;
    let logged = pipeline.logged_when_count(expected.total(), Duration::from_secs(180)).await;
    stop.cancel();
    let most = watcher.await.expect("the memory watcher");
    expected.check(&tallies, &logged);

    let mut redis_connection = pipeline.redis().await;
    let stats = redis_info(&mut redis_connection).await;
    let evicted: u64 = stats["evicted_keys"].parse().expect("evicted_keys");
    assert!(evicted > 0, "Redis had to evict: {:?}", (&stats["used_memory_peak"], &stats["evicted_keys"]));
    let used: u64 = stats["used_memory"].parse().expect("used_memory");
    assert!(used <= MAXMEMORY, "Redis stays under its maxmemory: {used} bytes");
    // Between two evictions Redis may pass the limit by what one counting step adds: its votes,
    // and, when a re-send hash outgrows its table, the doubled table (16 bytes per entry of the
    // largest hash: 100 000 votes over 6 partitions, about 17 000 entries, so up to about
    // 0.5 MiB). Without eviction the run would need twice the limit.
    assert!(most <= MAXMEMORY + 1024 * 1024, "Redis used at most {most} bytes during the run");
    let shortest = wait_for("a partition's re-send window to show the eviction", Duration::from_secs(10), || async {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let windows: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("bandvote_consumer_resend_window_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let shortest = windows.iter().copied().fold(f64::INFINITY, f64::min);
        if shortest < window.as_secs_f64() { Ok(shortest) } else { Err(format!("{windows:?}")) }
    })
    .await;
    eprintln!(
        "redis-full: {evicted} keys evicted, used {used} (at most {most}) of {MAXMEMORY} bytes, shortest window {shortest} s"
    );
    consumer.kill();
    pipeline.finish().await;
}
