//! The reads of the vote log. Each one is bounded: a page has at most `MAX_PAGE_SIZE` votes, every
//! query carries a server-side time limit and a client-side timeout, and tallies group by at most
//! [`MAX_TALLY_GROUPS`] (band, album, route) triples.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bandvote_domain::{
    AlbumTally, BandTally, CertifiedResult, KafkaPosition, LogId, LogTallies, LoggedVote, MongoNames, Route,
    RouteTally, VotePage, VoteStatus,
};
use futures::TryStreamExt;
use mongodb::{
    Client, Collection,
    bson::{Bson, DateTime, Document, doc},
    options::ClientOptions,
};
use serde::Deserialize;

use crate::query::{Cursor, Filter, LogQuery};

/// The most distinct (band, album, route) groups a tally reads. A contest has a few dozen; more
/// means the log holds votes for candidates nobody screened, and the tally says so instead of
/// growing without bound.
pub const MAX_TALLY_GROUPS: usize = 10_000;

/// How many filtered tallies are kept for reuse at most.
const TALLY_CACHE_ENTRIES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the vote log did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the vote log cannot be read: {0}")]
    Unavailable(#[from] mongodb::error::Error),
    #[error("more than {MAX_TALLY_GROUPS} distinct (band, album, route) groups; narrow the tally with band or route")]
    TooManyGroups,
}

/// A vote as the consumer logs it (see `MongoNames`).
#[derive(Debug, Deserialize)]
struct StoredVote {
    #[serde(rename = "_id")]
    id: String,
    /// Absent in documents written before log ids were scoped by the voter: the `_id` then.
    vote_id: Option<String>,
    name: String,
    album: String,
    year: i32,
    rank: f64,
    route: Route,
    voter_id: Option<String>,
    received_at: DateTime,
    kafka: StoredPosition,
    #[serde(default)]
    status: VoteStatus,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StoredPosition {
    partition: i32,
    offset: i64,
}

impl StoredVote {
    fn into_view(self) -> LoggedVote {
        LoggedVote {
            received_at: rfc3339_millis(self.received_at),
            vote_id: self.vote_id.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            name: self.name,
            album: self.album,
            year: self.year,
            rank: self.rank,
            route: self.route,
            voter_id: self.voter_id,
            kafka: KafkaPosition { partition: self.kafka.partition, offset: self.kafka.offset },
            status: self.status,
            reason: self.reason,
        }
    }

    fn cursor(&self) -> Option<Cursor> {
        Some(Cursor { received_at_ms: self.received_at.timestamp_millis(), id: LogId::parse(&self.id).ok()? })
    }
}

fn rfc3339_millis(at: DateTime) -> String {
    // bson writes whole seconds without a fraction; the console and the cursor want milliseconds.
    let millis = at.timestamp_millis().rem_euclid(1000);
    let seconds = DateTime::from_millis(at.timestamp_millis() - millis);
    let text = seconds.try_to_rfc3339_string().unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    format!("{}.{millis:03}Z", text.trim_end_matches('Z'))
}

type TallyCache = Arc<Mutex<HashMap<Filter, (Instant, LogTallies)>>>;

#[derive(Clone)]
pub struct VoteStore {
    client: Client,
    votes: Collection<Document>,
    results: Collection<Document>,
    timeout: Duration,
    tally_ttl: Duration,
    tallies: TallyCache,
}

impl VoteStore {
    pub async fn connect(
        uri: &str,
        names: &MongoNames,
        timeout: Duration,
        tally_ttl: Duration,
    ) -> mongodb::error::Result<Self> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "bandvote-logs-api".to_owned());
        // Fail a request fast when MongoDB is gone instead of after the driver's 30 s default.
        options.server_selection_timeout.get_or_insert(timeout);
        options.connect_timeout.get_or_insert(timeout);
        let client = Client::with_options(options)?;
        let votes = client.database(&names.database).collection(&names.collection);
        let results = client.database(&names.database).collection(MongoNames::RESULTS);
        Ok(VoteStore { client, votes, results, timeout, tally_ttl, tallies: Arc::default() })
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.bounded(async { self.client.database("admin").run_command(doc! {"ping": 1}).await.map(drop) })
            .await
            .map_err(|e| format!("mongodb: {e}"))
    }

    /// A page of votes, newest first, starting strictly after `query.cursor`.
    pub async fn page(&self, query: &LogQuery) -> Result<VotePage, StoreError> {
        let mut filter = filter_document(&query.filter);
        if let Some(cursor) = &query.cursor {
            let at = DateTime::from_millis(cursor.received_at_ms);
            filter.insert(
                "$or",
                vec![doc! {"received_at": {"$lt": at}}, doc! {"received_at": at, "_id": {"$lt": cursor.id.as_str()}}],
            );
        }
        let limit = i64::from(query.limit);
        let mut stored: Vec<StoredVote> = self
            .bounded(async {
                self.votes
                    .clone_with_type::<StoredVote>()
                    .find(filter)
                    .sort(doc! {"received_at": -1, "_id": -1})
                    // One more than asked tells whether there is a next page.
                    .limit(limit + 1)
                    .max_time(self.timeout)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let next_cursor = if stored.len() > query.limit as usize {
            stored.truncate(query.limit as usize);
            stored.last().and_then(StoredVote::cursor).map(|cursor| cursor.encode())
        } else {
            None
        };
        Ok(VotePage { votes: stored.into_iter().map(StoredVote::into_view).collect(), next_cursor })
    }

    pub async fn one(&self, id: &LogId) -> Result<Option<LoggedVote>, StoreError> {
        let found = self
            .bounded(async {
                self.votes
                    .clone_with_type::<StoredVote>()
                    .find_one(doc! {"_id": id.as_str()})
                    .max_time(self.timeout)
                    .await
            })
            .await?;
        Ok(found.map(StoredVote::into_view))
    }

    /// The certified result, once `bandvote-result` has published one.
    pub async fn result(&self) -> Result<Option<CertifiedResult>, StoreError> {
        let found = self
            .bounded(async {
                self.results
                    .clone_with_type::<CertifiedResult>()
                    .find_one(doc! {"_id": MongoNames::FINAL_RESULT})
                    .projection(doc! {"_id": 0})
                    .max_time(self.timeout)
                    .await
            })
            .await?;
        Ok(found)
    }

    /// Counts per band, album and route by aggregation, reused for `TALLY_CACHE` per filter.
    pub async fn tallies(&self, filter: &Filter) -> Result<LogTallies, StoreError> {
        if let Some((at, tallies)) = self.tallies.lock().expect("tally cache").get(filter)
            && at.elapsed() < self.tally_ttl
        {
            return Ok(tallies.clone());
        }
        let tallies = self.count(filter).await?;
        let mut cache = self.tallies.lock().expect("tally cache");
        if cache.len() >= TALLY_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(filter.clone(), (Instant::now(), tallies.clone()));
        Ok(tallies)
    }

    async fn count(&self, filter: &Filter) -> Result<LogTallies, StoreError> {
        // One accumulator per pipeline: FerretDB 1.x fills only the first accumulator of a
        // `$group` (FerretDB issue 4616), so the counts and the rank sums are read separately.
        let (votes, rank_sums) =
            tokio::try_join!(self.group(filter, doc! {"$sum": 1}), self.group(filter, doc! {"$sum": "$rank"}))?;
        Ok(fold_groups(&votes, &rank_sums))
    }

    /// Groups the filtered log by (band, album, route) and computes `value` for each group.
    async fn group(&self, filter: &Filter, value: Document) -> Result<Vec<Document>, StoreError> {
        let pipeline = [
            doc! {"$match": counted_only(filter_document(filter))},
            doc! {"$group": {"_id": {"name": "$name", "album": "$album", "route": "$route"}, "value": value}},
            doc! {"$limit": (MAX_TALLY_GROUPS + 1) as i64},
        ];
        let groups: Vec<Document> = self
            .bounded(async { self.votes.aggregate(pipeline).max_time(self.timeout).await?.try_collect().await })
            .await?;
        if groups.len() > MAX_TALLY_GROUPS {
            return Err(StoreError::TooManyGroups);
        }
        Ok(groups)
    }

    async fn bounded<T>(&self, query: impl Future<Output = mongodb::error::Result<T>>) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, query).await;
        metrics::histogram!("bandvote_logs_api_query_seconds").record(started.elapsed().as_secs_f64());
        Ok(result.map_err(|_| StoreError::TimedOut(self.timeout))??)
    }
}

/// Only the votes that were counted (a refused vote is in the log, not in the tallies).
fn counted_only(mut filter: Document) -> Document {
    filter.insert("status", doc! {"$ne": "refused"});
    filter
}

/// The filter as a document of plain string values: whatever a request says is compared as text.
fn filter_document(filter: &Filter) -> Document {
    let mut document = Document::new();
    if let Some(band) = &filter.band {
        document.insert("name", Bson::String(band.clone()));
    }
    if let Some(album) = &filter.album {
        document.insert("album", Bson::String(album.clone()));
    }
    if let Some(route) = filter.route {
        document.insert("route", Bson::String(route.as_str().to_owned()));
    }
    document
}

fn number(value: Option<&Bson>) -> f64 {
    match value {
        Some(Bson::Double(n)) => *n,
        Some(Bson::Int32(n)) => f64::from(*n),
        Some(Bson::Int64(n)) => *n as f64,
        _ => 0.0,
    }
}

/// Sums the (band, album, route) groups' counts and rank sums into the per-band, per-album and
/// per-route tallies.
fn fold_groups(votes: &[Document], rank_sums: &[Document]) -> LogTallies {
    let rank_sums: HashMap<String, f64> = rank_sums
        .iter()
        .filter_map(|group| Some((group.get_document("_id").ok()?.to_string(), number(group.get("value")))))
        .collect();
    let mut bands: BTreeMap<String, u64> = BTreeMap::new();
    let mut albums: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    let mut routes: BTreeMap<Route, u64> = BTreeMap::new();
    let mut total = 0;
    for group in votes {
        let Ok(key) = group.get_document("_id") else { continue };
        let text = |field: &str| key.get_str(field).unwrap_or_default().to_owned();
        let count = number(group.get("value")) as u64;
        let (name, album) = (text("name"), text("album"));
        total += count;
        *bands.entry(name.clone()).or_default() += count;
        let entry = albums.entry((name, album)).or_default();
        entry.0 += count;
        entry.1 += rank_sums.get(&key.to_string()).copied().unwrap_or_default();
        if let Some(route) = Route::ALL.into_iter().find(|r| r.as_str() == text("route")) {
            *routes.entry(route).or_default() += count;
        }
    }
    let mut tallies = LogTallies {
        total,
        bands: bands.into_iter().map(|(name, votes)| BandTally { name, votes }).collect(),
        albums: albums
            .into_iter()
            .map(|((name, album), (votes, rank_sum))| AlbumTally {
                name,
                album,
                votes,
                rank_avg: if votes == 0 { 0.0 } else { rank_sum / votes as f64 },
            })
            .collect(),
        routes: routes.into_iter().map(|(route, votes)| RouteTally { route, votes }).collect(),
    };
    // Most votes first; names break ties so the order is stable between refreshes.
    tallies.bands.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.name.cmp(&b.name)));
    tallies.albums.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| (&a.name, &a.album).cmp(&(&b.name, &b.album))));
    tallies.routes.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.route.cmp(&b.route)));
    tallies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_their_milliseconds() {
        assert_eq!(rfc3339_millis(DateTime::from_millis(1_764_201_600_007)), "2025-11-27T00:00:00.007Z");
        assert_eq!(rfc3339_millis(DateTime::from_millis(0)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn filters_are_plain_values() {
        let filter = Filter { band: Some("{\"$ne\": 1}".into()), album: Some("$gt".into()), route: Some(Route::Wasm) };
        let document = filter_document(&filter);
        assert_eq!(document, doc! {"name": "{\"$ne\": 1}", "album": "$gt", "route": "wasm"});
        assert!(document.values().all(|v| matches!(v, Bson::String(_))));
    }

    #[test]
    fn groups_fold_into_tallies() {
        let group = |name: &str, album: &str, route: &str, value: Bson| {
            doc! {"_id": {"name": name, "album": album, "route": route}, "value": value}
        };
        let keys = [
            ("Alux Nahual", "Conquista", "grpc", 3, 15.0),
            ("Alux Nahual", "Conquista", "http", 1, 1.0),
            ("Bohemia Suburbana", "Mil palabras", "http", 5, 50.0),
            ("Alux Nahual", "Alux Nahual", "grpc", 1, 2.5),
        ];
        let votes: Vec<_> = keys.iter().map(|(b, a, r, n, _)| group(b, a, r, Bson::Int32(*n))).collect();
        let rank_sums: Vec<_> = keys.iter().rev().map(|(b, a, r, _, s)| group(b, a, r, Bson::Double(*s))).collect();
        let tallies = fold_groups(&votes, &rank_sums);
        assert_eq!(tallies.total, 10);
        assert_eq!(
            tallies.bands,
            [
                BandTally { name: "Alux Nahual".into(), votes: 5 },
                BandTally { name: "Bohemia Suburbana".into(), votes: 5 }
            ]
        );
        assert_eq!(tallies.albums[0].album, "Mil palabras");
        assert_eq!((tallies.albums[1].votes, tallies.albums[1].rank_avg), (4, 4.0));
        assert_eq!(
            tallies.routes,
            [RouteTally { route: Route::Http, votes: 6 }, RouteTally { route: Route::Grpc, votes: 4 }]
        );
    }
}
