//! The certified result: the contest's final count, computed from the vote log alone, with a
//! digest over the log that anyone holding the log can recompute, and checked against Redis.
//!
//! The digest is the SHA-256 of one line per logged document, sorted by `_id`:
//! `<_id>\t<vote_id>\t<voter_id>\t<band>\t<album>\t<year>\t<rank>\t<route>\t<received_at_ms>\t<status>\t<reason>\n`
//! (empty for a missing voter or reason; the rank as the shortest decimal that reads back as the
//! same number). The same log gives the same digest and the same tallies, whoever runs it, however
//! often; a document added, removed or changed changes the digest.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::Context as _;
use bandvote_domain::{
    Contest, MongoNames, RedisKeys,
    vote_log::{CertifiedResult, ResultAlbum, ResultBand, ResultWindow},
};
use bandvote_ops::config::{ContestArgs, MongoArgs, RedisArgs};
use mongodb::bson::doc;
use sha2::Digest as _;

use crate::{
    audit::{Counts, LogReader, count_redis},
    log_store::LogStore,
};

/// The `bandvote-result` command.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bandvote-result",
    version,
    about = "Computes the contest's certified result from the vote log (tallies, refusals by reason, a digest \
             over the log), checks it against the Redis tallies, writes it as JSON and publishes it for the logs \
             API. Exits 0 when Redis agrees, 1 when it does not, 2 when a store cannot be read."
)]
pub struct ResultConfig {
    /// Write the result here as well as to stdout.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Do not store the result in MongoDB (`results`, where the logs API serves it from).
    #[arg(long)]
    pub no_publish: bool,
    #[command(flatten)]
    pub contest: ContestArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
}

/// Reads the log, computes the result and checks it against Redis.
pub async fn compute(
    log: &LogStore,
    contest: Option<&Contest>,
    redis: &redis::aio::ConnectionManager,
    keys: &RedisKeys,
) -> anyhow::Result<CertifiedResult> {
    let mut reader = LogReader::open_sorted(log).await.context("cannot read the vote log")?;
    let mut counts = Counts::default();
    let mut digest = sha2::Sha256::new();
    let mut documents = 0u64;
    let mut line = String::new();
    while let Some(vote) = reader.next_logged().await.context("cannot read the vote log")? {
        let vote = vote.map_err(|(id, why)| anyhow::anyhow!("document {id} is not a vote: {why}"))?;
        counts.add_logged(&vote.event, vote.refused);
        documents += 1;
        let (event, ballot) = (&vote.event, &vote.event.ballot);
        line.clear();
        let _ = writeln!(
            line,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            vote.document_id(),
            event.vote_id,
            ballot.voter_id.as_deref().unwrap_or(""),
            ballot.band,
            ballot.album,
            ballot.year.get(),
            ballot.rank.get(),
            event.route,
            event.received_at_ms,
            if vote.refused.is_some() { "refused" } else { "counted" },
            vote.refused.map_or("", |r| r.code()),
        );
        digest.update(line.as_bytes());
    }
    let redis_counts = count_redis(redis, keys).await.context("cannot read the Redis tallies")?;
    let mut expected = counts.clone();
    expected.seconds.clear();
    let mut found = redis_counts;
    found.seconds.clear();
    let differences: Vec<String> = expected.differences(&found).iter().map(ToString::to_string).collect();

    let mut bands: Vec<ResultBand> =
        counts.bands.iter().map(|(name, votes)| ResultBand { name: name.clone(), votes: *votes }).collect();
    bands.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.name.cmp(&b.name)));
    let mut albums: Vec<ResultAlbum> = Vec::new();
    for (field, votes) in &counts.albums {
        let (band, album) = RedisKeys::split_album_field(field).unwrap_or_else(|| (field.clone(), String::new()));
        let sum = counts.rank_sums.get(field).copied().unwrap_or(0.0);
        albums.push(ResultAlbum { name: band, album, votes: *votes, rank_avg: sum / *votes as f64 });
    }
    albums.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| (&a.name, &a.album).cmp(&(&b.name, &b.album))));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let window = contest.map(|c| c.window.clone()).unwrap_or_default();
    let closed = window.closes.as_ref().is_some_and(|c| now >= c.ms);
    Ok(CertifiedResult {
        contest: contest.and_then(|c| c.name.clone()),
        status: if closed { "closed" } else { "open" }.to_owned(),
        window: ResultWindow { opens: window.opens.map(|o| o.text), closes: window.closes.map(|c| c.text) },
        rule: contest.map_or_else(|| "no limit per voter".to_owned(), |c| c.voters.describe()),
        counted: counts.total,
        refused: counts.refused.values().sum(),
        refused_by_reason: counts.refused.clone(),
        bands,
        albums,
        documents,
        digest: format!("sha256:{}", hex(&digest.finalize())),
        redis_agrees: differences.is_empty(),
        redis_differences: differences,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Runs the command: computes, checks, publishes; returns the result.
pub async fn run(config: &ResultConfig) -> anyhow::Result<CertifiedResult> {
    let contest = config.contest.load().map_err(anyhow::Error::msg)?;
    let names = MongoNames::new(&config.mongo.database);
    let log = LogStore::connect(&config.mongo.uri, &names)
        .await
        .context("MONGODB_URI is not a valid MongoDB connection string")?;
    let keys = RedisKeys::new(&config.redis.key_prefix);
    let client = redis::Client::open(config.redis.url.as_str())?;
    let redis = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
        .await
        .context("Redis did not answer within 10 s")??;
    let result = compute(&log, contest.as_ref(), &redis, &keys).await?;
    if !config.no_publish {
        let document = mongodb::bson::to_document(&result)?;
        let results = log.results(&names);
        results
            .replace_one(doc! {"_id": MongoNames::FINAL_RESULT}, document)
            .upsert(true)
            .await
            .context("cannot store the result in MongoDB")?;
    }
    Ok(result)
}

/// The tallies of a result, as counts per band (for comparisons).
pub fn bands(result: &CertifiedResult) -> BTreeMap<String, u64> {
    result.bands.iter().map(|b| (b.name.clone(), b.votes)).collect()
}
