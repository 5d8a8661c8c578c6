//! The counting step itself against a real Redis, with acceptance times and offsets chosen by the
//! test: positions, re-sends across generations and past the window, ingest clocks that disagree,
//! and the answers that send a consumer back to Kafka.

use std::time::Duration;

use bandvote_consumer::tally::{Applied, Counted, Decision, Origin, PartitionBatch, Rules, Tally};
use bandvote_domain::{
    Ballot, RedisKeys, Refused, ResendWindow, Route, VoteEvent,
    ballot::{BallotInput, VoteId},
};
use bandvote_testkit::{Services, read_tallies, unique};

fn event(id: &str, n: usize, received_at_ms: i64) -> VoteEvent {
    let (name, album, year, rank) = bandvote_testkit::vote(n);
    let input = BallotInput::from_json(&serde_json::json!({"name": name, "album": album, "year": year, "rank": rank}))
        .expect("a vote");
    VoteEvent {
        vote_id: VoteId::parse(id).expect("an id"),
        ballot: Ballot::parse(&input).expect("a valid vote"),
        route: Route::Http,
        received_at_ms,
    }
}

/// Counts `votes` (id, acceptance ms) as the records at `first..` of partition 0. Copies of one id
/// are the same vote (the content follows the id).
async fn apply(tally: &Tally, origin: Origin, first: i64, votes: &[(&str, i64)]) -> Applied {
    let events: Vec<VoteEvent> =
        votes.iter().map(|(id, ms)| event(id, id.bytes().map(usize::from).sum(), *ms)).collect();
    let batch = PartitionBatch {
        partition: 0,
        origin,
        votes: events.iter().enumerate().map(|(i, e)| (first + i as i64, e)).collect(),
        dead_letters: Vec::new(),
    };
    tally.apply(&batch).await.expect("Redis answers")
}

fn counted(applied: Applied) -> Counted {
    match applied {
        Applied::Counted(counted) => counted,
        other => panic!("not counted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_the_resend_window_count_each_vote_once() {
    let services = Services::local();
    let prefix = unique("counting");
    let window = Duration::from_secs(3600);
    let tally = Tally::connect(&services.redis_url, RedisKeys::new(&prefix), "votes", window).await.expect("Redis");
    let generations = ResendWindow::new(3_600_000);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    // The start of a generation, so that the test knows which generation each time falls in.
    let t = (generations.generation_of(now) - 2) * generations.generation_ms();

    // A partition Redis has never seen is counted only from its beginning.
    assert_eq!(apply(&tally, Origin::At(5), 5, &[("a", t)]).await, Applied::NoPosition);
    let first = counted(apply(&tally, Origin::Start(0), 0, &[("a", t), ("b", t + 1), ("a", t + 2)]).await);
    assert_eq!((first.counted, first.repeated, first.redelivered, first.next), (2, 1, 0, 3));
    assert_eq!(first.window, Some(window));

    // Delivered again (a crash before the commit): below the position, nothing counts, whatever
    // the window says.
    let again = counted(apply(&tally, Origin::At(0), 0, &[("a", t), ("b", t + 1), ("a", t + 2), ("c", t + 3)]).await);
    assert_eq!((again.counted, again.redelivered, again.next), (1, 3, 4));

    // Re-sent by the client: new records, the same ids. Within the window they are recognised,
    // in the next generation and from an ingest whose clock is behind.
    let later = t + generations.generation_ms() + 10;
    let resent = counted(apply(&tally, Origin::At(4), 4, &[("a", later), ("b", t - 1000), ("d", later)]).await);
    assert_eq!((resent.counted, resent.repeated), (1, 2));
    let edge = t + generations.window_ms();
    assert_eq!(counted(apply(&tally, Origin::At(7), 7, &[("c", edge)]).await).repeated, 1);
    // Past the window and one more generation, a re-send is a new vote in Redis.
    let past = t + generations.window_ms() + 2 * generations.generation_ms();
    assert_eq!(counted(apply(&tally, Origin::At(8), 8, &[("b", past)]).await).counted, 1);

    // Records that start past the position: Redis is behind, nothing counts.
    assert_eq!(apply(&tally, Origin::At(20), 20, &[("z", past)]).await, Applied::Behind { position: 9 });
    let tallies = read_tallies(&services.redis_url, &prefix).await;
    assert_eq!(tallies.total, 5, "a, b, c, d, and b again past the window");
    assert_eq!(tallies.per_second_sum, 5);
    bandvote_testkit::clear_redis(&services.redis_url, &prefix).await;
}

/// A vote of `voter` (or none) for a band, with an id and an acceptance time.
fn ballot(voter: Option<&str>, id: &str, band: &str, rank: &str, received_at_ms: i64) -> VoteEvent {
    let mut input = serde_json::json!({"name": band, "album": "Primero", "year": "1990", "rank": rank});
    if let Some(voter) = voter {
        input["voter_id"] = serde_json::json!(voter);
    }
    VoteEvent {
        vote_id: VoteId::parse(id).expect("an id"),
        ballot: Ballot::parse(&BallotInput::from_json(&input).expect("a vote")).expect("a valid vote"),
        route: Route::Http,
        received_at_ms,
    }
}

async fn decide(tally: &Tally, origin: Origin, first: i64, votes: &[VoteEvent]) -> Counted {
    let batch = PartitionBatch {
        partition: 0,
        origin,
        votes: votes.iter().enumerate().map(|(i, e)| (first + i as i64, e)).collect(),
        dead_letters: Vec::new(),
    };
    counted(tally.apply(&batch).await.expect("Redis answers"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contest_rules_refuse_exactly_and_a_redelivery_gets_the_same_decisions() {
    use Decision::{Counted as C, Refused as R};
    let services = Services::local();
    let prefix = unique("rules");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let rules = Rules {
        opens_ms: Some(now - 60_000),
        closes_ms: Some(now + 60_000),
        max_votes: Some(3),
        max_votes_per_band: Some(2),
    };
    let tally = Tally::connect(&services.redis_url, RedisKeys::new(&prefix), "votes", Duration::from_secs(3600))
        .await
        .expect("Redis")
        .with_rules(rules);

    let first = [
        ballot(Some("ana"), "1", "X", "9", now),
        ballot(Some("ana"), "2", "X", "8", now),
        ballot(Some("ana"), "3", "X", "7", now),
        ballot(Some("ana"), "4", "Y", "6", now),
        ballot(Some("ana"), "5", "Z", "5", now),
        // Another voter may use the same vote ids: they are hers.
        ballot(Some("bea"), "1", "X", "9", now),
        ballot(None, "late", "X", "9", now + 61_000),
    ];
    let decided = decide(&tally, Origin::Start(0), 0, &first).await;
    let expected = vec![C, C, R(Refused::BandLimitReached), C, R(Refused::LimitReached), C, R(Refused::VotingClosed)];
    assert_eq!(decided.decisions, expected);
    assert_eq!(decided.counted, 4);

    // Delivered again after a crash: below the position, with the decisions it had.
    let again = decide(&tally, Origin::At(0), 0, &first).await;
    assert_eq!((again.counted, again.redelivered), (0, 7));
    assert_eq!(again.decisions, expected);

    // Re-sent by the clients: the same vote repeats its decision, another vote under a used id is a
    // conflict, and a conflict re-sent repeats.
    let resent = [
        ballot(Some("ana"), "1", "X", "9", now),
        ballot(Some("ana"), "5", "Z", "5", now),
        ballot(Some("ana"), "1", "Y", "1", now),
        ballot(Some("ana"), "1", "Y", "1", now),
    ];
    let decided = decide(&tally, Origin::At(7), 7, &resent).await;
    assert_eq!(
        decided.decisions,
        vec![C, R(Refused::LimitReached), R(Refused::VoteIdConflict), R(Refused::VoteIdConflict)]
    );
    assert_eq!((decided.counted, decided.repeated), (0, 3));

    let mut redis = redis::Client::open(services.redis_url.as_str())
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys = RedisKeys::new(&prefix);
    let refused: std::collections::BTreeMap<String, u64> =
        redis::cmd("HGETALL").arg(keys.refused()).query_async(&mut redis).await.expect("HGETALL");
    let expected_refused: std::collections::BTreeMap<String, u64> =
        [("band_limit_reached", 1), ("limit_reached", 1), ("vote_id_conflict", 1), ("voting_closed", 1)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
    assert_eq!(refused, expected_refused, "each refused vote once, however often it came");
    let used: std::collections::BTreeMap<String, u64> =
        redis::cmd("HGETALL").arg(keys.voters("votes", 0)).query_async(&mut redis).await.expect("HGETALL");
    assert_eq!(used.get("ana"), Some(&3));
    assert_eq!(used.get("ana|X"), Some(&2));
    assert_eq!(used.get("bea"), Some(&1));
    let tallies = read_tallies(&services.redis_url, &prefix).await;
    assert_eq!(tallies.total, 4);
    bandvote_testkit::clear_redis(&services.redis_url, &prefix).await;
}
