//! Ingest against a private three-node Kafka cluster shaped like production (replication factor
//! 3, `min.insync.replicas=2`): the node that leads a partition is killed in the middle of a
//! steady stream of votes and no accepted vote is lost; with two of the three nodes down a vote is
//! refused, never falsely accepted, and once they are back it is accepted again.
//!
//! The second node goes down with SIGTERM, not SIGKILL. Each node is also one of the three
//! controllers, and a second SIGKILL would take the controller quorum with it: the cluster would
//! freeze with two replicas in every ISR and refuse votes by timing out, whatever
//! `min.insync.replicas` says. A clean shutdown hands the partitions over while the quorum still
//! stands, so every ISR shrinks to the last node and `min.insync.replicas=2` is what refuses.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bandvote_domain::VoteEvent;
use bandvote_ops::config::KafkaArgs;
use bandvote_testkit::{Services, cluster::KafkaCluster, read_topic, unique, wait_for};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One new vote every this long, whatever the answers to earlier ones (an open loop).
const SEND_EVERY: Duration = Duration::from_millis(20);
/// How long a refused vote waits before it is sent again with its `vote_id`.
const RESEND_AFTER: Duration = Duration::from_millis(200);
/// Ingest's bound on one publish (`KAFKA_PRODUCE_TIMEOUT`, its default).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the clients heard.
#[derive(Default)]
struct Ledger {
    /// Each accepted vote id, with when the acceptance arrived.
    accepted: Vec<(String, Instant)>,
    /// Each refusal: when it arrived, the status and the reply.
    refused: Vec<(Instant, u16, Value)>,
}

impl Ledger {
    fn accepted_after(&self, instant: Instant) -> usize {
        self.accepted.iter().filter(|(_, at)| *at > instant).count()
    }
}

/// An HTTP client of one ingest.
#[derive(Clone)]
struct Voter {
    client: reqwest::Client,
    url: String,
}

impl Voter {
    /// Sends the vote `vote_id` once: the status and the reply.
    async fn send(&self, vote_id: &str) -> (u16, Value) {
        let vote =
            json!({"name": "Alux Nahual", "album": "Conquista", "year": "1990", "rank": "9.5", "vote_id": vote_id});
        let response = self.client.post(&self.url).json(&vote).send().await.expect("ingest answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON reply"))
    }

    /// Sends the vote until it is accepted, as a careful client does: a refused vote goes again
    /// with the same `vote_id`, which cannot count twice.
    async fn send_until_accepted(self, vote_id: String, ledger: Arc<Mutex<Ledger>>) {
        loop {
            let (status, reply) = self.send(&vote_id).await;
            if status == 200 {
                ledger.lock().expect("the ledger").accepted.push((vote_id, Instant::now()));
                return;
            }
            ledger.lock().expect("the ledger").refused.push((Instant::now(), status, reply));
            tokio::time::sleep(RESEND_AFTER).await;
        }
    }
}

/// The vote ids in `topic`.
fn vote_ids_in(brokers: &str, topic: &str) -> BTreeSet<String> {
    read_topic(brokers, topic)
        .into_iter()
        .map(|(_, payload)| VoteEvent::decode(payload.as_deref()).expect("a vote event").vote_id.as_str().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_partition_leader_loses_no_accepted_vote_and_two_nodes_down_refuse_votes() {
    let started = Instant::now();
    let mut cluster = KafkaCluster::start(3).await;
    eprintln!("cluster: three nodes up after {:?}", started.elapsed());

    // Ingest uses Kafka only.
    let services = Services { kafka_brokers: cluster.brokers(), redis_url: String::new(), mongodb_uri: String::new() };
    let topic = format!("votes-{}", unique("cluster"));
    let config = bandvote_ingest::Config::parse_from(services.ingest_args(&topic, &["--kafka-replication-factor=3"]));
    let kafka = KafkaArgs { partitions: 6, replication_factor: 3, ..config.kafka.clone() };
    bandvote_ops::topics::ensure(&kafka).await.expect("the topics are created");
    let partitions = cluster.wait_for_isr(&topic, 3).await;
    assert_eq!(partitions.len(), 6, "{partitions:?}");
    assert!(partitions.iter().all(|p| p.replicas.len() == 3), "three replicas each: {partitions:?}");
    // A new topic's configuration can take a moment to be described on every broker.
    wait_for("the topic to need two in-sync replicas", Duration::from_secs(30), || async {
        match cluster.topic_config(&topic, "min.insync.replicas").await.as_deref() {
            Some("2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let ingest = bandvote_ingest::Ingest::build(config).await.expect("ingest starts");
    let url = format!("http://{}/votes", ingest.http_addr());
    let stop_ingest = CancellationToken::new();
    tokio::spawn(ingest.run_until_stopped(stop_ingest.clone()));
    let voter =
        Voter { client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"), url };

    // A steady stream: a new vote every SEND_EVERY, each re-sent until accepted.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let streaming = Arc::new(AtomicBool::new(true));
    let stream = tokio::spawn({
        let (voter, ledger, streaming, run) = (voter.clone(), ledger.clone(), streaming.clone(), unique("vote"));
        async move {
            let mut votes = Vec::new();
            let mut tick = tokio::time::interval(SEND_EVERY);
            for n in 0.. {
                tick.tick().await;
                if !streaming.load(Ordering::Relaxed) {
                    break;
                }
                votes.push(tokio::spawn(voter.clone().send_until_accepted(format!("{run}-{n}"), ledger.clone())));
            }
            for vote in votes {
                vote.await.expect("a vote task");
            }
        }
    });
    let accepted_after = |instant: Instant| {
        let ledger = ledger.clone();
        move || {
            let count = ledger.lock().expect("the ledger").accepted_after(instant);
            async move { if count >= 50 { Ok(()) } else { Err(format!("{count} accepted")) } }
        }
    };
    wait_for("50 votes accepted before the kill", Duration::from_secs(30), accepted_after(started)).await;

    let leader = cluster.leader_of(&topic, 0).await.expect("partition 0 has a leader");
    cluster.kill(leader);
    let killed_at = Instant::now();
    eprintln!("cluster: killed node {leader}, the leader of partition 0");
    let new_leader = wait_for("another node to lead partition 0", Duration::from_secs(30), || async {
        match cluster.leader_of(&topic, 0).await {
            Some(node) if node != leader => Ok(node),
            other => Err(format!("leader {other:?}")),
        }
    })
    .await;
    let failed_over_at = Instant::now();
    eprintln!("cluster: node {new_leader} leads partition 0 after {:?}", failed_over_at - killed_at);
    wait_for("50 votes accepted after the failover", Duration::from_secs(30), accepted_after(failed_over_at)).await;
    streaming.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), stream)
        .await
        .expect("every vote of the stream is accepted within a minute")
        .expect("the stream");

    let ledger = std::mem::take(&mut *ledger.lock().expect("the ledger"));
    let before = ledger.accepted.len() - ledger.accepted_after(killed_at);
    let refusals = &ledger.refused;
    let last_refusal = refusals.iter().map(|(at, ..)| *at).max();
    // With acks=all the dead node holds back every partition whose ISR it is in until the
    // controller fences it (broker.session.timeout.ms), so acceptances pause, briefly, everywhere.
    let mut accepted_at: Vec<Instant> = ledger.accepted.iter().map(|(_, at)| *at).collect();
    accepted_at.sort();
    let longest_pause = accepted_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "cluster: {} votes accepted ({before} before the kill, {} after the failover), {} refusals, the last {:?} \
         after the failover, acceptances paused {longest_pause:?} at the longest",
        ledger.accepted.len(),
        ledger.accepted_after(failed_over_at),
        refusals.len(),
        last_refusal.map(|at| at.saturating_duration_since(failed_over_at)),
    );
    assert!(before >= 50 && ledger.accepted_after(failed_over_at) >= 50, "the kill landed mid-stream");
    assert!(longest_pause < Duration::from_secs(12), "ingest stopped accepting for {longest_pause:?}");
    for (at, status, reply) in refusals {
        assert_eq!((*status, reply["error"]["code"].as_str()), (503, Some("unavailable")), "{reply}");
        assert!(*at > killed_at, "no vote is refused before the kill: {reply}");
    }
    // A vote held back by the dead node is refused at the latest PRODUCE_TIMEOUT after it was
    // sent, so refusals end soon after the failover.
    if let Some(last) = last_refusal {
        let bound = failed_over_at + PRODUCE_TIMEOUT + Duration::from_secs(3);
        assert!(last < bound, "refusals went on {:?} after the failover", last - failed_over_at);
    }
    let mut refusals_per_vote = BTreeMap::<&str, usize>::new();
    for (_, _, reply) in refusals {
        *refusals_per_vote
            .entry(reply["error"]["vote_id"].as_str().expect("the refusal names the vote"))
            .or_default() += 1;
    }
    let most = refusals_per_vote.values().max().copied().unwrap_or(0);
    assert!(most <= 3, "a vote was refused {most} times before it was accepted");

    let in_kafka = vote_ids_in(&cluster.running_brokers(), &topic);
    let missing: Vec<&String> = ledger.accepted.iter().map(|(id, _)| id).filter(|id| !in_kafka.contains(*id)).collect();
    assert!(missing.is_empty(), "{} accepted votes are not in Kafka: {missing:?}", missing.len());

    // Two of three nodes down: with one replica in sync, min.insync.replicas=2 cannot be met, so
    // no vote may be accepted.
    let second = (0..3).find(|&node| node != leader).expect("another node");
    let last = 3 - leader - second;
    cluster.stop(second).await;
    wait_for("every partition led by the last node, alone in its ISR", Duration::from_secs(30), || async {
        let partitions = cluster.partitions(&topic).await;
        let alone = partitions.iter().all(|p| p.leader == Some(last) && p.isr == [last]);
        if alone { Ok(()) } else { Err(format!("{partitions:?}")) }
    })
    .await;
    eprintln!("cluster: stopped node {second} too; node {last} alone is in sync");
    let asked_at = Instant::now();
    let refused_ids: Vec<String> = (0..6).map(|n| unique(&format!("two-down-{n}"))).collect();
    let answers = futures::future::join_all(refused_ids.iter().map(|id| voter.send(id))).await;
    for ((status, reply), id) in answers.iter().zip(&refused_ids) {
        assert_eq!(*status, 503, "with two of three nodes down a vote is refused: {reply}");
        assert_eq!(reply["error"]["vote_id"], id.as_str(), "the refusal names the vote: {reply}");
    }
    assert!(asked_at.elapsed() < PRODUCE_TIMEOUT + Duration::from_secs(3), "refused within the produce timeout");
    eprintln!("cluster: with two nodes down: {}", answers[0].1);

    cluster.restart(leader).await;
    cluster.restart(second).await;
    eprintln!("cluster: nodes {leader} and {second} are back after {:?}", asked_at.elapsed());
    for id in &refused_ids {
        wait_for("a vote refused with two nodes down to be accepted again", Duration::from_secs(60), || async {
            match voter.send(id).await {
                (200, _) => Ok(()),
                (status, reply) => Err(format!("{status} {reply}")),
            }
        })
        .await;
    }
    cluster.wait_for_isr(&topic, 3).await;
    let in_kafka = vote_ids_in(&cluster.running_brokers(), &topic);
    assert!(refused_ids.iter().all(|id| in_kafka.contains(id)), "the votes accepted again are in Kafka");
    stop_ingest.cancel();
    eprintln!("cluster: done after {:?}", started.elapsed());
}
