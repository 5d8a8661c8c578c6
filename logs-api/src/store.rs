//! The reads of the vote log. Each one is bounded: a page has at most `MAX_PAGE_SIZE` votes, every
//! query carries a server-side time limit and a client-side timeout, and tallies group by at most
//! [`MAX_TALLY_GROUPS`] (band, album, route) triples.
//!
//! A page is read as a bounded range scan on the `newest_first` index (or the filter's own index):
//! the votes received in a window below the page's top (now, or the cursor), newest first, widened
//! [`WINDOW_GROWTH`] times at a time from [`FIRST_WINDOW`] until the page is full. Once the window
//! reaches the oldest vote the instance has seen (or [`WIDEST_WINDOW`]), the last query has no lower
//! bound, which is the query of an unwindowed page: a page is always exactly the first `limit`
//! votes of the unbounded "newest first" order below its top.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, OnceLock},
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
use tokio_util::sync::CancellationToken;

use crate::query::{Cursor, Filter, LogQuery};

/// The most distinct (band, album, route) groups a tally reads. A contest has a few dozen; more
/// means the log holds votes for candidates nobody screened, and the tally says so instead of
/// growing without bound.
pub const MAX_TALLY_GROUPS: usize = 10_000;

/// The first window a page reads: the votes received in the 10 s below its top.
pub const FIRST_WINDOW: Duration = Duration::from_secs(10);

/// How much wider each next window is than the one before.
pub const WINDOW_GROWTH: u32 = 4;

/// The widest window with a lower bound (10 s × 4⁹, about 30 days); past it, the page's last
/// query has none.
pub const WIDEST_WINDOW: Duration = Duration::from_secs(10 * 4u64.pow(9));

/// How often the oldest vote is looked for again while the log is empty or does not answer.
const OLDEST_RETRY: Duration = Duration::from_secs(5);

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

pub(crate) fn rfc3339_millis(at: DateTime) -> String {
    // bson writes whole seconds without a fraction; the console and the cursor want milliseconds.
    let millis = at.timestamp_millis().rem_euclid(1000);
    let seconds = DateTime::from_millis(at.timestamp_millis() - millis);
    let text = seconds.try_to_rfc3339_string().unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    format!("{}.{millis:03}Z", text.trim_end_matches('Z'))
}

#[derive(Clone)]
pub struct VoteStore {
    client: Client,
    votes: Collection<Document>,
    results: Collection<Document>,
    timeout: Duration,
    /// The `received_at` (ms) of the oldest vote when it was first looked for: where widening a
    /// page's window stops. Only a hint: a vote logged later with an older `received_at` is still
    /// read, by the page's last query, which has no lower bound.
    oldest_ms: Arc<OnceLock<i64>>,
}

impl VoteStore {
    pub async fn connect(uri: &str, names: &MongoNames, timeout: Duration) -> mongodb::error::Result<Self> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "bandvote-logs-api".to_owned());
        // Fail a request fast when MongoDB is gone instead of after the driver's 30 s default.
        options.server_selection_timeout.get_or_insert(timeout);
        options.connect_timeout.get_or_insert(timeout);
        let client = Client::with_options(options)?;
        let votes = client.database(&names.database).collection(&names.collection);
        let results = client.database(&names.database).collection(MongoNames::RESULTS);
        Ok(VoteStore { client, votes, results, timeout, oldest_ms: Arc::default() })
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.bounded(async { self.client.database("admin").run_command(doc! {"ping": 1}).await.map(drop) })
            .await
            .map_err(|e| format!("mongodb: {e}"))
    }

    /// A page of votes, newest first, starting strictly after `query.cursor`: the first
    /// `query.limit` votes of the unbounded order, read through windows that widen until the page
    /// is full (see the module docs).
    pub async fn page(&self, query: &LogQuery) -> Result<VotePage, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut below = filter_document(&query.filter);
        let top_ms = match &query.cursor {
            Some(cursor) => {
                let at = DateTime::from_millis(cursor.received_at_ms);
                below.insert(
                    "$or",
                    vec![
                        doc! {"received_at": {"$lt": at}},
                        doc! {"received_at": at, "_id": {"$lt": cursor.id.as_str()}},
                    ],
                );
                cursor.received_at_ms
            }
            // No upper bound: a vote stamped by a clock ahead of this one is still the newest.
            None => DateTime::now().timestamp_millis(),
        };
        // One more than asked tells whether there is a next page.
        let wanted = query.limit as usize + 1;
        let mut stored = Vec::new();
        for lower_ms in lower_bounds(top_ms, self.oldest_ms.get().copied()) {
            let mut filter = below.clone();
            if let Some(lower_ms) = lower_ms {
                let mut range = doc! {"$gte": DateTime::from_millis(lower_ms)};
                if query.cursor.is_some() {
                    // Implied by the cursor's `$or`; stated so that the index bounds are plain.
                    range.insert("$lte", DateTime::from_millis(top_ms));
                }
                filter.insert("received_at", range);
            }
            stored = self.newest_first(filter, wanted, deadline).await?;
            if stored.len() == wanted {
                break;
            }
        }
        let next_cursor = if stored.len() > query.limit as usize {
            stored.truncate(query.limit as usize);
            stored.last().and_then(StoredVote::cursor).map(|cursor| cursor.encode())
        } else {
            None
        };
        Ok(VotePage { votes: stored.into_iter().map(StoredVote::into_view).collect(), next_cursor })
    }

    /// The first `limit` votes matching `filter`, newest first, within what is left until `deadline`.
    async fn newest_first(
        &self,
        filter: Document,
        limit: usize,
        deadline: Instant,
    ) -> Result<Vec<StoredVote>, StoreError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::TimedOut(self.timeout));
        }
        self.bounded_for(left, self.timeout, async {
            self.votes
                .clone_with_type::<StoredVote>()
                .find(filter)
                .sort(doc! {"received_at": -1, "_id": -1})
                .limit(limit as i64)
                .max_time(left)
                .await?
                .try_collect()
                .await
        })
        .await
    }

    /// Looks for the oldest vote once (again every few seconds while the log is empty or does not
    /// answer) and keeps its `received_at` as where a page's window stops widening.
    pub async fn learn_oldest(self, limit: Duration, stop: CancellationToken) {
        loop {
            let oldest = self.bounded_for(limit, limit, async {
                self.votes
                    .clone_with_type::<StoredVote>()
                    .find_one(Document::new())
                    .sort(doc! {"received_at": 1, "_id": 1})
                    .max_time(limit)
                    .await
            });
            let found = tokio::select! {
                () = stop.cancelled() => return,
                found = oldest => found,
            };
            match found {
                Ok(Some(vote)) => {
                    let oldest_ms = vote.received_at.timestamp_millis();
                    tracing::debug!(oldest_ms, "oldest vote found: page windows stop widening there");
                    self.oldest_ms.get_or_init(|| oldest_ms);
                    return;
                }
                Ok(None) => {}
                Err(err) => tracing::debug!(error = %err, "cannot look for the oldest vote yet"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(OLDEST_RETRY) => {}
            }
        }
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

    /// Counts per band, album and route by aggregation over the whole filtered log, each query
    /// within `limit`. The background refresher ([`crate::tally`]) is its only caller.
    pub async fn count(&self, filter: &Filter, limit: Duration) -> Result<LogTallies, StoreError> {
        // One accumulator per pipeline: FerretDB 1.x fills only the first accumulator of a
        // `$group` (FerretDB issue 4616), so the counts and the rank sums are read separately.
        let (votes, rank_sums) = tokio::try_join!(
            self.group(filter, doc! {"$sum": 1}, limit),
            self.group(filter, doc! {"$sum": "$rank"}, limit)
        )?;
        Ok(fold_groups(&votes, &rank_sums))
    }

    /// Groups the filtered log by (band, album, route) and computes `value` for each group.
    async fn group(&self, filter: &Filter, value: Document, limit: Duration) -> Result<Vec<Document>, StoreError> {
        let pipeline = [
            doc! {"$match": counted_only(filter_document(filter))},
            doc! {"$group": {"_id": {"name": "$name", "album": "$album", "route": "$route"}, "value": value}},
            doc! {"$limit": (MAX_TALLY_GROUPS + 1) as i64},
        ];
        let groups: Vec<Document> = self
            .bounded_for(limit, limit, async {
                self.votes.aggregate(pipeline).max_time(limit).await?.try_collect().await
            })
            .await?;
        if groups.len() > MAX_TALLY_GROUPS {
            return Err(StoreError::TooManyGroups);
        }
        Ok(groups)
    }

    async fn bounded<T>(&self, query: impl Future<Output = mongodb::error::Result<T>>) -> Result<T, StoreError> {
        self.bounded_for(self.timeout, self.timeout, query).await
    }

    /// Runs `query` for at most `left`; a timeout is reported as the whole `budget` passing.
    async fn bounded_for<T>(
        &self,
        left: Duration,
        budget: Duration,
        query: impl Future<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(left, query).await;
        metrics::histogram!("bandvote_logs_api_query_seconds").record(started.elapsed().as_secs_f64());
        Ok(result.map_err(|_| StoreError::TimedOut(budget))??)
    }
}

/// The lower bounds (ms) of a page's queries below `top_ms`, narrowest first: windows widening
/// from [`FIRST_WINDOW`] by [`WINDOW_GROWTH`], and last `None`, a query without one, once a
/// window reaches `oldest_ms` or passes [`WIDEST_WINDOW`].
fn lower_bounds(top_ms: i64, oldest_ms: Option<i64>) -> impl Iterator<Item = Option<i64>> {
    let mut window = Some(FIRST_WINDOW);
    std::iter::from_fn(move || {
        let current = window?;
        let lower_ms = top_ms.saturating_sub(current.as_millis() as i64);
        if current > WIDEST_WINDOW || oldest_ms.is_some_and(|oldest| lower_ms <= oldest) {
            window = None;
            return Some(None);
        }
        window = Some(current * WINDOW_GROWTH);
        Some(Some(lower_ms))
    })
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
    fn windows_widen_until_the_oldest_vote_then_drop_the_bound() {
        let top = 1_764_201_600_000;
        let lowers: Vec<_> = lower_bounds(top, Some(top - 3_600_000)).collect();
        let seconds = [10, 40, 160, 640, 2560].map(|s| Some(top - s * 1000));
        assert_eq!(lowers, [&seconds[..], &[None]].concat(), "10 s × 4ⁿ, then unbounded past an hour");
        assert_eq!(lower_bounds(top, Some(top)).collect::<Vec<_>>(), [None], "nothing older than the top");

        // Without an oldest vote yet: up to the widest window, then unbounded.
        let lowers: Vec<_> = lower_bounds(top, None).collect();
        assert_eq!(lowers.len(), 11);
        assert_eq!(lowers[9], Some(top - WIDEST_WINDOW.as_millis() as i64));
        assert_eq!(lowers[10], None);
        assert_eq!(lower_bounds(5, None).last(), Some(None), "near the epoch too");
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
