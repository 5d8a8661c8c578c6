//! The counting step itself against a real Redis, with acceptance times and offsets chosen by the
//! test: positions, re-sends across generations and past the window, ingest clocks that disagree,
//! and the answers that send a consumer back to Kafka.

use std::time::Duration;

use bandvote_consumer::tally::{Applied, Counted, Origin, PartitionBatch, Tally};
use bandvote_domain::{
    Ballot, RedisKeys, ResendWindow, Route, VoteEvent,
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

/// Counts `votes` (id, acceptance ms) as the records at `first..` of partition 0.
async fn apply(tally: &Tally, origin: Origin, first: i64, votes: &[(&str, i64)]) -> Applied {
    let events: Vec<VoteEvent> = votes.iter().enumerate().map(|(n, (id, ms))| event(id, n, *ms)).collect();
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
