//! How long "the latest 20 votes" takes: through the logs API under concurrent requests, next to
//! the same query made directly with the MongoDB driver, against the same server and data.
//!
//! ```sh
//! cargo run --release -p bandvote-logs-api --example read_latency -- --votes 100000
//! ```
//!
//! It fills a fresh database with `--votes` votes in the consumer's own document shape (through the
//! consumer's `LogStore`), starts the logs API in this process on that database, then runs
//! `--requests` queries with `--concurrency` workers each way and prints the percentiles.

use std::time::{Duration, Instant};

use bandvote_consumer::log_store::{LogStore, LoggedVote};
use bandvote_domain::{Ballot, MongoNames, Route, VoteEvent, VoteId};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Parser)]
struct Args {
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    mongodb_uri: String,
    /// Votes in the log before measuring.
    #[arg(long, default_value_t = 100_000)]
    votes: usize,
    /// Queries each way.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Queries in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Keep the database afterwards.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = format!("read_latency_{}", std::process::id());
    let names = MongoNames::new(&database);
    let store = LogStore::connect(&args.mongodb_uri, &names).await?;
    store.ensure_indexes().await?;

    let started = Instant::now();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let bands =
        [("Alux Nahual", "Conquista"), ("Bohemia Suburbana", "Mil palabras"), ("Viernes Verde", "Hijos del Maíz")];
    let mut offset = 0;
    for chunk in (0..args.votes).collect::<Vec<_>>().chunks(1000) {
        let votes: Vec<LoggedVote> = chunk
            .iter()
            .map(|&n| {
                let (band, album) = bands[n % bands.len()];
                let ballot = Ballot::from_json(&serde_json::json!({
                    "name": band, "album": album, "year": "1990", "rank": format!("{}", n % 10),
                }))
                .expect("a valid ballot");
                offset += 1;
                LoggedVote {
                    event: VoteEvent {
                        vote_id: VoteId::parse(&format!("v-{n:09}")).expect("a valid id"),
                        ballot,
                        route: if n % 2 == 0 { Route::Grpc } else { Route::Http },
                        received_at_ms: now_ms - (args.votes - n) as i64,
                    },
                    partition: (n % 6) as i32,
                    offset,
                    refused: None,
                }
            })
            .collect();
        store.insert(&votes).await?;
    }
    println!("filled {} votes in {:.1} s", args.votes, started.elapsed().as_secs_f64());

    let stop = CancellationToken::new();
    let config = bandvote_logs_api::Config::parse_from([
        "bandvote-logs-api".to_owned(),
        "--port=0".into(),
        format!("--mongodb-uri={}", args.mongodb_uri),
        format!("--mongodb-database={database}"),
        "--log=warn".into(),
    ]);
    let api = bandvote_logs_api::LogsApi::build(config).await?;
    let url = format!("http://{}/votes", api.addr());
    tokio::spawn(api.run_until_stopped(stop.clone()));

    let http = reqwest::Client::new();
    let through_api = measure(args.requests, args.concurrency, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let page: serde_json::Value = http.get(&url).send().await?.error_for_status()?.json().await?;
            anyhow::ensure!(page["votes"].as_array().map(Vec::len) == Some(20), "a page of 20");
            Ok(())
        }
    })
    .await?;

    let client = mongodb::Client::with_uri_str(&args.mongodb_uri).await?;
    let votes = client.database(&database).collection::<Document>(MongoNames::VOTES);
    let direct = measure(args.requests, args.concurrency, || {
        let votes = votes.clone();
        async move {
            let found: Vec<Document> =
                votes.find(doc! {}).sort(doc! {"received_at": -1, "_id": -1}).limit(20).await?.try_collect().await?;
            anyhow::ensure!(found.len() == 20, "20 documents");
            Ok(())
        }
    })
    .await?;

    println!("latest 20 of {} votes, {} queries, {} in flight:", args.votes, args.requests, args.concurrency);
    println!("{:<28} {:>8} {:>8} {:>8} {:>8} {:>10}", "", "p50 ms", "p90 ms", "p99 ms", "max ms", "queries/s");
    for (name, result) in [("logs API (GET /votes)", through_api), ("driver (find+sort+limit)", direct)] {
        println!(
            "{name:<28} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}",
            result.percentile(0.50),
            result.percentile(0.90),
            result.percentile(0.99),
            result.percentile(1.0),
            result.rate
        );
    }
    stop.cancel();
    if !args.keep {
        client.database(&database).drop().await?;
    }
    Ok(())
}

struct Latencies {
    /// Sorted, in milliseconds.
    millis: Vec<f64>,
    rate: f64,
}

impl Latencies {
    fn percentile(&self, q: f64) -> f64 {
        let index = ((self.millis.len() as f64 * q).ceil() as usize).clamp(1, self.millis.len()) - 1;
        self.millis[index]
    }
}

/// Runs `requests` calls of `query`, `concurrency` at a time, and records each one's latency.
async fn measure<F, Fut>(requests: usize, concurrency: usize, query: F) -> anyhow::Result<Latencies>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..requests)
        .map(|_| {
            let call = query();
            async move {
                let at = Instant::now();
                call.await?;
                Ok(at.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut millis =
        results.into_iter().map(|r| r.map(|d| d.as_secs_f64() * 1000.0)).collect::<anyhow::Result<Vec<_>>>()?;
    millis.sort_by(f64::total_cmp);
    Ok(Latencies { millis, rate: requests as f64 / elapsed.as_secs_f64() })
}
