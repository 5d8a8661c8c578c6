//! The contest's rules through the whole pipeline: the voting window on every route, the per-voter
//! limit under concurrent load from two ingest processes and three consumers, and vote ids scoped
//! by their voter.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bandvote_domain::VoteStatus;
use bandvote_proto::{
    confproto::{RequestId, get_info_client::GetInfoClient},
    v1::{Vote, votes_client::VotesClient},
};
use bandvote_testkit::{Services, read_tallies, unique};
use serde_json::{Value, json};

use super::{Pipeline, Replica, json_vote, proto_vote};

/// Writes a contest file for a test and returns its path.
fn contest_file(name: &str, contest: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.json", unique(name)));
    std::fs::write(&path, contest.to_string()).expect("write the contest file");
    path
}

/// An RFC 3339 time `offset_ms` from now.
fn rfc3339_from_now(offset_ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now + offset_ms) * 1_000_000).expect("a time");
    at.format(&time::format_description::well_known::Rfc3339).expect("RFC 3339")
}

/// A pipeline whose ingest reads `contest` and answers from the consumers' Redis.
async fn pipeline_for(name: &str, contest: &std::path::Path) -> Pipeline {
    let id = unique(name);
    let services = Services::local();
    let args = [
        format!("--contest-file={}", contest.display()),
        format!("--redis-url={}", services.redis_url),
        format!("--redis-key-prefix=test-{id}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Pipeline::start_with(&id, services, format!("votes-{id}"), &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_contest_refuses_every_route_and_kafka_holds_none_of_it() {
    let contest = contest_file(
        "closed",
        &json!({"voting": {"opens": rfc3339_from_now(-120_000), "closes": rfc3339_from_now(-60_000)}}),
    );
    let pipeline = pipeline_for("closed", &contest).await;
    for path in ["/votes", "/rust/send_data", "/insert", "/", "/grpc/insert"] {
        let (status, reply) = pipeline.post(path, &json_vote(1)).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (403, Some("voting_closed")), "{path}: {reply}");
        assert!(reply["error"]["closes"].is_string() && reply["error"]["opens"].is_string(), "{reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| m.starts_with("voting is open from")), "{reply}");
    }
    let (status, reply) = pipeline.post("/votes/batch", &json!([json_vote(1), json_vote(2)])).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (403, Some("voting_closed")), "{reply}");
    let mut grpc = pipeline.votes_client().await;
    let refused = grpc.cast(proto_vote(3)).await.expect_err("closed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let refused = grpc.cast_batch(tokio_stream::iter(vec![proto_vote(4)])).await.expect_err("closed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let mut original = GetInfoClient::connect(format!("http://{}", pipeline.grpc)).await.expect("confproto");
    let (name, album, year, rank) = bandvote_testkit::vote(5);
    let request = RequestId { name: name.into(), album: album.into(), year: year.into(), rank: rank.into() };
    let refused = original.return_info(request).await.expect_err("closed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    // A vote that was accepted is in the topic; these are not.
    let records = bandvote_testkit::read_topic(&pipeline.services.kafka_brokers, &pipeline.topic);
    assert!(records.is_empty(), "the topic holds {} records of a closed contest", records.len());
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_accepted_before_the_close_counts_when_it_is_consumed_after() {
    let closes_in = 3_000;
    let contest = contest_file(
        "closing",
        &json!({"voting": {"opens": rfc3339_from_now(-60_000), "closes": rfc3339_from_now(closes_in)}}),
    );
    let pipeline = pipeline_for("closing", &contest).await;
    let mut accepted = Vec::new();
    for n in 0..5 {
        let (status, reply) = pipeline.post("/votes", &json_vote(n)).await;
        assert_eq!(status, 200, "open: {reply}");
        accepted.push(reply["vote_id"].as_str().expect("id").to_owned());
    }
    // Votes up to the close, every 100 ms; the first refusal is the close.
    loop {
        let (status, reply) = pipeline.post("/votes", &json_vote(accepted.len())).await;
        match status {
            200 => accepted.push(reply["vote_id"].as_str().expect("id").to_owned()),
            403 => break,
            _ => panic!("{reply}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = accepted.len() as u64;
    assert!(total > 5 && total < 100, "{total} votes accepted before the close");
    // Only now does a consumer read them: they were accepted in the window, so they count.
    let consumer = pipeline.consume_in_process_with(&[&format!("--contest-file={}", contest.display())]).await;
    let tallies = pipeline.tallies_when_total(total, Duration::from_secs(30)).await;
    let logged = pipeline.logged_when_count(total, Duration::from_secs(30)).await;
    assert_eq!(tallies.total, total);
    assert_eq!(logged.keys().cloned().collect::<Vec<_>>(), {
        let mut ids = accepted.clone();
        ids.sort();
        ids
    });
    assert!(logged.values().all(|d| d.status == VoteStatus::Counted), "{logged:?}");
    consumer.stop().await;
    pipeline.finish().await;
}

/// Answers to the votes of the limit test.
#[derive(Debug, Default)]
struct Answers {
    accepted: BTreeMap<String, Vec<String>>,
    refused_at_ingest: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_voter_counts_more_than_the_rule_under_two_ingests_and_three_consumers() {
    const LIMIT: u64 = 3;
    let contest = contest_file("limit", &json!({"voters": {"max_votes": LIMIT}}));
    let pipeline = pipeline_for("limit", &contest).await;
    // A second ingest process on the same topic, answering from the same Redis.
    let second = {
        let args = [
            format!("--contest-file={}", contest.display()),
            format!("--redis-url={}", pipeline.services.redis_url),
            format!("--redis-key-prefix={}", pipeline.prefix),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = <bandvote_ingest::Config as clap::Parser>::parse_from(
            pipeline.services.ingest_args(&pipeline.topic, &args),
        );
        let ingest = bandvote_ingest::Ingest::build(config).await.expect("the second ingest starts");
        let addr = ingest.http_addr();
        tokio::spawn(ingest.run_until_stopped(pipeline.stop.clone()));
        addr
    };
    let contest_arg = format!("--contest-file={}", contest.display());
    let mut consumers: Vec<Replica> = (0..3).map(|_| pipeline.spawn_consumer_on(0, &[&contest_arg])).collect();

    // 40 voters: the first 10 send 10 votes each, the others 2; all at once, over both ingests and
    // both routes.
    let voters: Vec<(String, usize)> = (0..40).map(|v| (format!("voter-{v}"), if v < 10 { 10 } else { 2 })).collect();
    let mut sends = Vec::new();
    for (voter, votes) in &voters {
        for n in 0..*votes {
            let (client, voter) = (pipeline.http_client.clone(), voter.clone());
            let base = if n % 2 == 0 { format!("http://{}", pipeline.http) } else { format!("http://{second}") };
            let path = if n % 3 == 0 { "/grpc/insert" } else { "/votes" };
            let mut body = json_vote(n);
            body["voter_id"] = json!(voter);
            body["vote_id"] = json!(format!("v{n}"));
            sends.push(tokio::spawn(async move {
                let response = client.post(format!("{base}{path}")).json(&body).send().await.expect("ingest answers");
                let status = response.status().as_u16();
                let reply: Value = response.json().await.expect("JSON");
                (voter, n, status, reply)
            }));
        }
    }
    let mut answers = Answers::default();
    for send in sends {
        let (voter, n, status, reply) = send.await.expect("sent");
        match (status, reply["error"]["code"].as_str()) {
            (200, _) => answers.accepted.entry(voter).or_default().push(format!("v{n}")),
            (409, Some("limit_reached")) => *answers.refused_at_ingest.entry(voter).or_default() += 1,
            other => panic!("unexpected answer {other:?}: {reply}"),
        }
    }
    let accepted: u64 = answers.accepted.values().map(|ids| ids.len() as u64).sum();
    let expected: u64 = voters.iter().map(|(_, votes)| (*votes as u64).min(LIMIT)).sum();
    // Every accepted vote is decided: counted or logged as refused.
    pipeline.logged_when_count(accepted, Duration::from_secs(90)).await;
    // Now that their votes are counted, the heavy voters try twice more: ingest itself says no.
    for (voter, _) in voters.iter().take(10) {
        for n in 100..102 {
            let mut body = json_vote(n);
            body["voter_id"] = json!(voter);
            let (status, reply) = pipeline.post("/votes", &body).await;
            assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("limit_reached")), "{reply}");
            assert!(
                reply["error"]["message"].as_str().is_some_and(|m| m.contains("at most 3 votes per voter")),
                "{reply}"
            );
            *answers.refused_at_ingest.entry(voter.clone()).or_default() += 1;
        }
    }
    let logged = pipeline.logged_when_count(accepted, Duration::from_secs(90)).await;
    let tallies = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(tallies.total, expected, "each voter counts min(votes sent, {LIMIT})");
    let mut counted_per_voter: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused_at_counting = 0;
    for document in logged.values() {
        let voter = document.voter_id.clone().expect("a voter");
        match (document.status, document.reason.as_deref()) {
            (VoteStatus::Counted, _) => *counted_per_voter.entry(voter).or_default() += 1,
            (VoteStatus::Refused, Some("limit_reached")) => refused_at_counting += 1,
            other => panic!("unexpected log status {other:?}: {document:?}"),
        }
    }
    for (voter, votes) in &voters {
        assert_eq!(counted_per_voter.get(voter).copied(), Some((*votes as u64).min(LIMIT)), "{voter}");
    }
    let refused_at_ingest: u64 = answers.refused_at_ingest.values().sum();
    assert_eq!(
        refused_at_ingest + refused_at_counting + expected,
        voters.iter().map(|(_, v)| *v as u64).sum::<u64>() + 20,
        "every vote was counted, refused at ingest, or logged as refused"
    );
    assert!(refused_at_counting > 0, "votes racing through ingest were refused by the consumers");
    let redis_refused = bandvote_testkit::read_refused(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(redis_refused.get("limit_reached").copied().unwrap_or(0), refused_at_counting);
    eprintln!(
        "limit: {expected} counted, {refused_at_ingest} refused by ingest, {refused_at_counting} by the consumers"
    );
    for consumer in &mut consumers {
        assert!(consumer.terminate().success());
    }
    let report = bandvote_consumer::audit::run(&pipeline.audit_config(&[&contest_arg])).await.expect("the audit runs");
    assert!(report.agrees(), "{report}");

    // Redis loses everything: the rebuild brings back the tallies and what each voter has used.
    bandvote_testkit::clear_redis(&pipeline.services.redis_url, &pipeline.prefix).await;
    let report = bandvote_consumer::audit::run(&pipeline.audit_config(&[&contest_arg, "--rebuild"]))
        .await
        .expect("the rebuild runs");
    assert!(report.agrees(), "{report}");
    assert_eq!(report.rebuilt.as_ref().map(|r| r.votes), Some(expected as i64), "{report}");
    let keys = bandvote_domain::RedisKeys::new(&pipeline.prefix);
    let mut redis = pipeline.redis().await;
    for (voter, votes) in &voters {
        let partition = bandvote_domain::event::partition_of(format!("voter:{voter}").as_bytes(), 6);
        let used: Option<u64> = redis::cmd("HGET")
            .arg(keys.voters(&pipeline.topic, partition))
            .arg(voter)
            .query_async(&mut redis)
            .await
            .expect("HGET");
        assert_eq!(used, Some((*votes as u64).min(LIMIT)), "{voter}'s votes are back in Redis");
    }
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_id_belongs_to_its_voter_and_cannot_be_reused_for_another_vote() {
    let contest = contest_file("ids", &json!({}));
    let pipeline = pipeline_for("ids", &contest).await;
    let consumer = pipeline.consume_in_process().await;
    let vote = |voter: &str, n: usize| {
        let mut body = json_vote(n);
        body["voter_id"] = json!(voter);
        body["vote_id"] = json!("phone-502-1");
        body
    };
    // Two voters choose the same vote id: both are counted.
    for voter in ["ana", "bea"] {
        let (status, reply) = pipeline.post("/votes", &vote(voter, 1)).await;
        assert_eq!(status, 200, "{reply}");
    }
    pipeline.tallies_when_total(2, Duration::from_secs(30)).await;
    // The same voter re-sends the same vote: accepted again, counted once. Another vote under the
    // same id: 409, on both routes.
    let (status, reply) = pipeline.post("/votes", &vote("ana", 1)).await;
    assert_eq!((status, reply["vote_id"].as_str()), (200, Some("phone-502-1")), "{reply}");
    let (status, reply) = pipeline.post("/votes", &vote("ana", 2)).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("vote_id_conflict")), "{reply}");
    let mut grpc: VotesClient<tonic::transport::Channel> = pipeline.votes_client().await;
    let different = Vote { voter_id: "ana".into(), vote_id: "phone-502-1".into(), ..proto_vote(3) };
    let refused = grpc.cast(different).await.expect_err("a conflict");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    let logged = pipeline.logged_when_count(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tallies = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(tallies.total, 2, "nothing counted twice");
    let ids: Vec<&String> = logged.keys().collect();
    assert_eq!(ids, ["ana/phone-502-1", "bea/phone-502-1"]);
    consumer.stop().await;
    pipeline.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_certified_result_is_the_log_recounted_with_a_stable_digest_equal_to_redis() {
    use sha2::Digest as _;
    let contest = contest_file(
        "result",
        &json!({
            "name": "Prueba",
            "voting": {"opens": rfc3339_from_now(-60_000), "closes": rfc3339_from_now(4_000)},
            "voters": {"max_votes": 2},
        }),
    );
    let contest_arg = format!("--contest-file={}", contest.display());
    let pipeline = pipeline_for("result", &contest).await;
    let consumer = pipeline.consume_in_process_with(&[&contest_arg]).await;
    // Three voters, one over the rule; all at once, so the consumer refuses what ingest let pass.
    let mut sends = Vec::new();
    for (voter, votes) in [("ana", 4), ("bea", 2), ("caro", 1)] {
        for n in 0..votes {
            let mut body = json_vote(n);
            body["voter_id"] = json!(voter);
            let (client, url) = (pipeline.http_client.clone(), format!("http://{}/votes", pipeline.http));
            sends.push(tokio::spawn(
                async move { client.post(url).json(&body).send().await.expect("answers").status() },
            ));
        }
    }
    let mut accepted = 0;
    for send in sends {
        accepted += u64::from(send.await.expect("sent").as_u16() == 200);
    }
    let logged = pipeline.logged_when_count(accepted, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;

    let config = <bandvote_consumer::result::ResultConfig as clap::Parser>::parse_from([
        "bandvote-result".to_owned(),
        contest_arg.clone(),
        format!("--redis-url={}", pipeline.services.redis_url),
        format!("--redis-key-prefix={}", pipeline.prefix),
        format!("--mongodb-uri={}", pipeline.services.mongodb_uri),
        format!("--mongodb-database={}", pipeline.database),
    ]);
    let first = bandvote_consumer::result::run(&config).await.expect("the result");
    let second = bandvote_consumer::result::run(&config).await.expect("the result again");
    assert_eq!(first, second, "the same log gives the same result and digest");
    assert_eq!(first.status, "closed");
    assert_eq!(first.contest.as_deref(), Some("Prueba"));
    assert!(first.redis_agrees, "{:?}", first.redis_differences);
    assert_eq!((first.counted, first.documents), (5, logged.len() as u64), "ana 2, bea 2, caro 1");
    assert_eq!(first.refused, accepted - 5);

    // The same numbers and digest, recomputed here from the documents themselves.
    let mut bands: BTreeMap<String, u64> = BTreeMap::new();
    let mut digest = sha2::Sha256::new();
    for (id, document) in &logged {
        let text = |field: &Option<String>| field.clone().unwrap_or_default();
        let status = document.status.as_str();
        if document.status == VoteStatus::Counted {
            *bands.entry(document.name.clone()).or_default() += 1;
        }
        let received = document.received_at.timestamp_millis();
        let (year, rank) = (document.year, document.rank);
        digest.update(format!(
            "{id}\t{}\t{}\t{}\t{}\t{year}\t{rank}\t{}\t{received}\t{status}\t{}\n",
            text(&document.vote_id),
            text(&document.voter_id),
            document.name,
            document.album,
            document.route.as_str(),
            text(&document.reason),
        ));
    }
    let recomputed: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(first.digest, format!("sha256:{recomputed}"));
    assert_eq!(bandvote_consumer::result::bands(&first), bands);
    let tallies = read_tallies(&pipeline.services.redis_url, &pipeline.prefix).await;
    assert_eq!(tallies.by_band, bands, "the result is what Redis counted");
    // Published where the logs API reads it.
    let stored = mongodb::Client::with_uri_str(&pipeline.services.mongodb_uri)
        .await
        .expect("MongoDB")
        .database(&pipeline.database)
        .collection::<mongodb::bson::Document>(bandvote_domain::MongoNames::RESULTS)
        .find_one(mongodb::bson::doc! {"_id": bandvote_domain::MongoNames::FINAL_RESULT})
        .await
        .expect("a query");
    assert_eq!(stored.and_then(|d| d.get_str("digest").ok().map(str::to_owned)), Some(first.digest.clone()));
    consumer.stop().await;
    pipeline.finish().await;
}
