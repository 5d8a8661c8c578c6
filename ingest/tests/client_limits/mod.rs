//! The per-client limit against a client that tries to get around it: a client that writes its own
//! `X-Forwarded-For` stays in its bucket behind a load balancer that appends to the header as
//! Google's does; a batch costs a token per vote on HTTP and gRPC; an IPv6 client is one bucket
//! per /64.

use bandvote_proto::v1::{Vote, votes_client::VotesClient};
use bandvote_testkit::{BANDS, read_topic};
use serde_json::{Value, json};

use super::{Ingest, metrics_text};

/// The address Google's load balancer appends after the client's (its forwarding rule's).
const LOAD_BALANCER: &str = "34.120.0.1";

fn vote() -> Value {
    json!({"name": BANDS[0].0, "album": BANDS[0].1[0], "year": "1990", "rank": "9"})
}

fn proto_vote() -> Vote {
    let (band, album) = (BANDS[1].0, BANDS[1].1[0]);
    Vote { name: band.into(), album: album.into(), year: "1990".into(), rank: "8".into(), ..Vote::default() }
}

/// `X-Forwarded-For` as ingest receives it behind Google's load balancer: what the client wrote
/// itself, then `<client-ip>,<load-balancer-ip>`.
fn through_the_balancer(written_by_client: &str, client: &str) -> String {
    format!("{written_by_client}, {client},{LOAD_BALANCER}")
}

/// POSTs `body` to `path` with this `X-Forwarded-For` (none if empty); the status and the reply.
async fn post_from(ingest: &Ingest, path: &str, forwarded_for: &str, body: &Value) -> (u16, Value) {
    let mut request = ingest.client.post(format!("http://{}{path}", ingest.http)).json(body);
    if !forwarded_for.is_empty() {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    let response = request.send().await.expect("ingest answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON reply"))
}

async fn statuses(ingest: &Ingest, path: &str, forwarded_for: &[String]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for header in forwarded_for {
        statuses.push(post_from(ingest, path, header, &vote()).await.0);
    }
    statuses
}

/// A gRPC call with this `x-forwarded-for` metadata.
fn with_forwarded_for<T>(message: T, forwarded_for: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-forwarded-for", forwarded_for.parse().expect("ASCII"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_own_forwarded_for_stays_in_its_bucket() {
    let ingest =
        Ingest::start("spoof", &["--rate-limit-per-client=0.01", "--rate-limit-burst=3", "--trusted-proxies=2"]).await;
    // Each vote claims another first hop; the balancer appends the real client and itself.
    let spoofed: Vec<String> = (1..=5).map(|n| through_the_balancer(&format!("1.2.3.{n}"), "203.0.113.7")).collect();
    assert_eq!(statuses(&ingest, "/votes", &spoofed).await, [200, 200, 200, 429, 429]);
    let (status, reply) =
        post_from(&ingest, "/votes", &through_the_balancer("203.0.113.7", "198.51.100.1"), &vote()).await;
    assert_eq!(status, 200, "another client, even one claiming the first's address, has its own budget: {reply}");

    // The gRPC route's HTTP front: the vote is charged once, there, for the client the balancer
    // saw; the gRPC server behind it (same process, over loopback) does not charge it again.
    let spoofed: Vec<String> = (1..=4).map(|n| through_the_balancer(&format!("9.9.9.{n}"), "198.51.100.20")).collect();
    assert_eq!(statuses(&ingest, "/grpc/insert", &spoofed).await, [200, 200, 200, 429]);

    // Native gRPC through the Gateway: Google's proxy appends to the x-forwarded-for metadata.
    let mut grpc = VotesClient::new(ingest.channel().await);
    let mut codes = Vec::new();
    for n in 1..=4 {
        let metadata = through_the_balancer(&format!("5.6.7.{n}"), "192.0.2.44");
        codes.push(grpc.cast(with_forwarded_for(proto_vote(), &metadata)).await.map(drop).map_err(|s| s.code()));
    }
    assert_eq!(codes, [Ok(()), Ok(()), Ok(()), Err(tonic::Code::ResourceExhausted)]);

    // Without the balancer's two addresses the client is the peer, and the miss is counted.
    let (status, _) = post_from(&ingest, "/votes", "203.0.113.99", &vote()).await;
    assert_eq!(status, 200, "keyed on the peer");
    let metrics = metrics_text(&ingest.client, &format!("http://{}", ingest.ops)).await;
    assert!(metrics.contains(r#"bandvote_ingest_forwarded_for_fallbacks_total{reason="too_few_hops"}"#), "{metrics}");

    assert_eq!(read_topic(&ingest.brokers, &ingest.topic).len(), 3 + 1 + 3 + 3 + 1, "only accepted votes reach Kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spends_one_token_per_vote_on_every_route() {
    let ingest = Ingest::start(
        "batch-tokens",
        &["--rate-limit-per-client=0.01", "--rate-limit-burst=1000", "--trusted-proxies=1"],
    )
    .await;
    let batch: Vec<Value> = (0..1000).map(|_| vote()).collect();
    let (status, reply) = post_from(&ingest, "/votes/batch", "203.0.113.1", &json!(batch)).await;
    assert_eq!((status, reply["accepted"].as_u64()), (200, Some(1000)), "{reply}");
    let (status, reply) = post_from(&ingest, "/votes", "203.0.113.1", &vote()).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (429, Some("rate_limited")), "the batch spent 1000: {reply}");

    // A gRPC stream spends a token per message as it arrives.
    let mut grpc = VotesClient::new(ingest.channel().await);
    let stream = tokio_stream::iter(vec![proto_vote(); 1000]);
    let reply = grpc.cast_batch(with_forwarded_for(stream, "203.0.113.2")).await.expect("1000 votes accepted");
    assert_eq!(reply.get_ref().accepted, 1000);
    let refused = grpc.cast(with_forwarded_for(proto_vote(), "203.0.113.2")).await.expect_err("no token left");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(read_topic(&ingest.brokers, &ingest.topic).len(), 2000);
    drop(ingest);

    // A batch larger than the whole burst is refused, whatever the client's bucket holds.
    let ingest =
        Ingest::start("over-burst", &["--rate-limit-per-client=0.01", "--rate-limit-burst=5", "--trusted-proxies=1"])
            .await;
    let (status, reply) = post_from(&ingest, "/votes/batch", "203.0.113.3", &json!(vec![vote(); 6])).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (429, Some("rate_limited")), "{reply}");
    let message = reply["error"]["message"].as_str().expect("a message");
    assert!(message.contains("5 one client may send at once (RATE_LIMIT_BURST)"), "{message}");
    let mut grpc = VotesClient::new(ingest.channel().await);
    let stream = tokio_stream::iter(vec![proto_vote(); 6]);
    let refused = grpc.cast_batch(with_forwarded_for(stream, "203.0.113.4")).await.expect_err("over the burst");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("RATE_LIMIT_BURST"), "{refused:?}");
    assert_eq!(read_topic(&ingest.brokers, &ingest.topic).len(), 0, "nothing of a refused batch reaches Kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_addresses_in_one_64_share_a_bucket() {
    let ingest =
        Ingest::start("ipv6", &["--rate-limit-per-client=0.01", "--rate-limit-burst=2", "--trusted-proxies=1"]).await;
    let from = |addresses: &[&str]| addresses.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let one_64 = from(&["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2:abcd::7"]);
    assert_eq!(statuses(&ingest, "/votes", &one_64).await, [200, 200, 429], "one subscriber's /64, one bucket");
    assert_eq!(statuses(&ingest, "/votes", &from(&["2001:db8:1:3::1"])).await, [200], "the next /64 is another");
    let mapped = from(&["::ffff:198.51.100.9", "198.51.100.9", "198.51.100.10"]);
    assert_eq!(statuses(&ingest, "/votes", &mapped).await, [200, 200, 200], "IPv4-mapped is IPv4, one per address");
    assert_eq!(statuses(&ingest, "/votes", &from(&["198.51.100.9"])).await, [429]);
}
