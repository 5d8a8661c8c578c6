//! The reads of the vote log. Each one is bounded: a page has at most `MAX_PAGE_SIZE` votes, every
//! query carries a server-side time limit and a client-side timeout, and tallies group by at most
//! [`MAX_TALLY_GROUPS`] (band, album, route) triples.
//!
//! A page is read as a walk down the `newest_first` index (or the filter's own index) in
//! contiguous slabs of `received_at`, newest first, each query asking only for the votes the page
//! still lacks: the first slab is about as wide as the last full page spanned (the log's recent
//! rate), each next one [`SLAB_GROWTH`] times wider, and a slab below an empty one starts at the
//! newest vote the instance knows of (after a pause in voting, the walk does not cross the empty
//! hours in ever wider steps and then land in the busy ones with a slab of hours). Once a slab
//! reaches the oldest vote the instance has seen (or the walk passes [`WIDEST_REACH`]), the last
//! query has no lower bound: a page is always exactly the first `limit` votes of the unbounded
//! "newest first" order below its top. What a slab costs grows with the votes in it, not with
//! its width, on every server measured (docs/LOGS.md), so the walk keeps slabs to about a page.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

pub(crate) use bandvote_domain::log_document::rfc3339_millis;
use bandvote_domain::{
    AlbumTally, BandTally, CertifiedResult, LogDocument, LogId, LogTallies, LoggedVote, MongoNames, Route, RouteTally,
    VotePage, VoteStatus,
};
use futures::TryStreamExt;
use mongodb::{
    Client, Collection,
    bson::{Bson, DateTime, Document, doc},
    options::ClientOptions,
};
use tokio_util::sync::CancellationToken;

use crate::query::{Cursor, Filter, LogQuery};

/// The most distinct (band, album, route) groups a tally reads. A contest has a few dozen; more
/// means the log holds votes for candidates nobody screened, and the tally says so instead of
/// growing without bound.
pub const MAX_TALLY_GROUPS: usize = 10_000;

/// The first slab's width while the instance has not yet read a full latest page.
pub const FIRST_SLAB: Duration = Duration::from_millis(100);

/// The bounds of a first slab sized from the last full page: about two pages at the rate it
/// showed, never narrower or wider than these.
pub const FIRST_SLAB_MIN: Duration = Duration::from_millis(10);
pub const FIRST_SLAB_MAX: Duration = Duration::from_secs(10);

/// How much wider each next slab is than the one before.
pub const SLAB_GROWTH: i64 = 4;

/// How far below its top a walk reads in slabs (30 days); past it, the page's last query has no
/// lower bound.
pub const WIDEST_REACH: Duration = Duration::from_secs(30 * 86_400);

/// Not known yet (for the instance's newest vote and first slab).
const UNKNOWN: i64 = i64::MIN;

/// How often the log's ends are looked for again while it is empty or does not answer.
const ENDS_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the vote log did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the vote log cannot be read: {0}")]
    Unavailable(#[from] mongodb::error::Error),
    #[error("more than {MAX_TALLY_GROUPS} distinct (band, album, route) groups; narrow the tally with band or route")]
    TooManyGroups,
}

/// The first page's cursor below `vote`.
fn cursor_below(vote: &LogDocument) -> Option<Cursor> {
    Some(Cursor { received_at_ms: vote.received_at.timestamp_millis(), id: LogId::parse(&vote.id).ok()? })
}

#[derive(Clone)]
pub struct VoteStore {
    client: Client,
    votes: Collection<Document>,
    results: Collection<Document>,
    timeout: Duration,
    /// What the instance knows of the log, for sizing a page's slabs: each is only a hint (a
    /// wrong one costs time, never a vote), see [`LogShape`].
    shape: Arc<LogShape>,
    /// Whether the server needs one aggregation per accumulator (see [`Self::count`]).
    one_accumulator: Arc<OnceLock<bool>>,
}

/// What a page's walk is shaped by. None of it decides what a page holds, only how many votes
/// its queries read on the way.
#[derive(Debug)]
struct LogShape {
    /// The `received_at` (ms) of the oldest vote when it was first looked for: where the walk
    /// stops. A vote logged later with an older `received_at` is still read, by the page's last
    /// query, which has no lower bound.
    oldest_ms: OnceLock<i64>,
    /// The newest `received_at` (ms) any latest page (or the start-up look) has read: where a
    /// slab below an empty one starts.
    newest_ms: AtomicI64,
    /// Two spans of the last full latest page (ms): the first slab's width.
    first_slab_ms: AtomicI64,
}

impl Default for LogShape {
    fn default() -> Self {
        LogShape {
            oldest_ms: OnceLock::new(),
            newest_ms: AtomicI64::new(UNKNOWN),
            first_slab_ms: AtomicI64::new(UNKNOWN),
        }
    }
}

impl LogShape {
    fn known(value: &AtomicI64) -> Option<i64> {
        Some(value.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN)
    }

    fn walk(&self, top: Top) -> SlabWalk {
        let first = Self::known(&self.first_slab_ms).unwrap_or(FIRST_SLAB.as_millis() as i64);
        SlabWalk::new(top, first, self.oldest_ms.get().copied(), Self::known(&self.newest_ms))
    }

    /// Learns from a latest page (no cursor) that read `wanted` votes or fewer: its newest vote,
    /// and, when it was full and unfiltered, the rate it shows.
    fn learn(&self, page: &[LogDocument], wanted: usize, unfiltered: bool) {
        let (Some(newest), Some(oldest)) = (page.first(), page.last()) else { return };
        let newest_ms = newest.received_at.timestamp_millis();
        self.newest_ms.fetch_max(newest_ms, Ordering::Relaxed);
        if unfiltered && page.len() == wanted {
            let span = 2 * (newest_ms - oldest.received_at.timestamp_millis());
            let (min, max) = (FIRST_SLAB_MIN.as_millis() as i64, FIRST_SLAB_MAX.as_millis() as i64);
            self.first_slab_ms.store(span.clamp(min, max), Ordering::Relaxed);
        }
    }
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
        Ok(VoteStore { client, votes, results, timeout, shape: Arc::default(), one_accumulator: Arc::default() })
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.bounded(async { self.client.database("admin").run_command(doc! {"ping": 1}).await.map(drop) })
            .await
            .map_err(|e| format!("mongodb: {e}"))
    }

    /// A page of votes, newest first, starting strictly after `query.cursor`: the first
    /// `query.limit` votes of the unbounded order, read in slabs down the index until the page is
    /// full (see the module docs).
    pub async fn page(&self, query: &LogQuery) -> Result<VotePage, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let filter = filter_document(&query.filter);
        // One more than asked tells whether there is a next page.
        let wanted = query.limit as usize + 1;
        let mut stored = Vec::new();
        let top = match &query.cursor {
            Some(cursor) => {
                // The cursor's own millisecond first (its later ids are on an earlier page), then
                // everything strictly older: two plain ranges on the index, never an `$or`.
                let at = DateTime::from_millis(cursor.received_at_ms);
                let mut same_instant = filter.clone();
                same_instant.insert("received_at", at);
                same_instant.insert("_id", doc! {"$lt": cursor.id.as_str()});
                stored = self.newest_first(same_instant, wanted, deadline).await?;
                Top::Below(cursor.received_at_ms)
            }
            None => Top::Now(DateTime::now().timestamp_millis()),
        };
        let mut walk = self.shape.walk(top);
        let mut last_found = None;
        while stored.len() < wanted {
            let Some(slab) = walk.next(last_found) else { break };
            let mut within = filter.clone();
            if let Some(range) = slab.range() {
                within.insert("received_at", range);
            }
            let found = self.newest_first(within, wanted - stored.len(), deadline).await?;
            metrics::counter!("bandvote_logs_api_page_slabs_total").increment(1);
            last_found = Some(found.len());
            stored.extend(found);
        }
        if query.cursor.is_none() {
            self.shape.learn(&stored, wanted, query.filter == Filter::default());
        }
        let next_cursor = if stored.len() > query.limit as usize {
            stored.truncate(query.limit as usize);
            stored.last().and_then(cursor_below).map(|cursor| cursor.encode())
        } else {
            None
        };
        Ok(VotePage { votes: stored.into_iter().map(LogDocument::into_view).collect(), next_cursor })
    }

    /// The first `limit` votes matching `filter`, newest first, within what is left until `deadline`.
    async fn newest_first(
        &self,
        filter: Document,
        limit: usize,
        deadline: Instant,
    ) -> Result<Vec<LogDocument>, StoreError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::TimedOut(self.timeout));
        }
        self.bounded_for(left, self.timeout, async {
            self.votes
                .clone_with_type::<LogDocument>()
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

    /// Looks for the oldest and the newest vote once (again every few seconds while the log is
    /// empty or does not answer): where a page's walk stops, and where a slab below an empty one
    /// starts until a latest page has read a newer vote.
    pub async fn learn_ends(self, limit: Duration, stop: CancellationToken) {
        loop {
            let found = tokio::select! {
                () = stop.cancelled() => return,
                found = async { Ok::<_, StoreError>((self.end(1, limit).await?, self.end(-1, limit).await?)) } => found,
            };
            match found {
                Ok((Some(oldest), Some(newest))) => {
                    let oldest_ms = oldest.received_at.timestamp_millis();
                    let newest_ms = newest.received_at.timestamp_millis();
                    tracing::debug!(oldest_ms, newest_ms, "the log's ends found: pages' walks are shaped by them");
                    self.shape.oldest_ms.get_or_init(|| oldest_ms);
                    self.shape.newest_ms.fetch_max(newest_ms, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "cannot look for the log's ends yet"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ENDS_RETRY) => {}
            }
        }
    }

    /// The oldest vote (`order` 1) or the newest (-1).
    async fn end(&self, order: i32, limit: Duration) -> Result<Option<LogDocument>, StoreError> {
        self.bounded_for(limit, limit, async {
            self.votes
                .clone_with_type::<LogDocument>()
                .find_one(Document::new())
                .sort(doc! {"received_at": order, "_id": order})
                .max_time(limit)
                .await
        })
        .await
    }

    pub async fn one(&self, id: &LogId) -> Result<Option<LoggedVote>, StoreError> {
        let found = self
            .bounded(async {
                self.votes
                    .clone_with_type::<LogDocument>()
                    .find_one(doc! {"_id": id.as_str()})
                    .max_time(self.timeout)
                    .await
            })
            .await?;
        Ok(found.map(LogDocument::into_view))
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

    /// Counts per (band, album, route) by aggregation over the filtered log's `logged` votes, each
    /// query within `limit`. The background refreshers ([`crate::tally`]) are its only callers.
    pub async fn count(&self, filter: &Filter, logged: Logged, limit: Duration) -> Result<Vec<TallyGroup>, StoreError> {
        let accumulators = [("votes", doc! {"$sum": 1}), ("rank_sum", doc! {"$sum": "$rank"})];
        let documents = if self.one_accumulator_per_group(limit).await? {
            let [votes, rank_sums] = accumulators.map(|one| self.group(filter, logged, [one], limit));
            let (mut votes, rank_sums) = tokio::try_join!(votes, rank_sums)?;
            votes.extend(rank_sums);
            votes
        } else {
            self.group(filter, logged, accumulators, limit).await?
        };
        tally_groups(&documents)
    }

    /// Groups the filtered log by (band, album, route, status) with `accumulators`. Refused
    /// votes are a group of their own, dropped when the groups are read, rather than a `$match`
    /// on `status`: grouping by one more field costs less than testing every vote (secantus-mdb,
    /// both accumulators, a million votes: 3.2 s against 3.9 s; the two aggregations this replaces
    /// read the log twice).
    async fn group<const N: usize>(
        &self,
        filter: &Filter,
        logged: Logged,
        accumulators: [(&str, Document); N],
        limit: Duration,
    ) -> Result<Vec<Document>, StoreError> {
        let key = doc! {"name": "$name", "album": "$album", "route": "$route", "status": "$status"};
        let mut group = doc! {"_id": key};
        group
            .extend(accumulators.into_iter().map(|(name, accumulator)| (name.to_owned(), Bson::Document(accumulator))));
        let mut pipeline = Vec::new();
        let mut filter = filter_document(filter);
        if let Some(condition) = logged.condition() {
            filter.insert("logged_at", condition);
        }
        if !filter.is_empty() {
            pipeline.push(doc! {"$match": filter});
        }
        pipeline.push(doc! {"$group": group});
        // Each kind of vote in a group may come back: twice the groups a tally may have.
        pipeline.push(doc! {"$limit": (2 * MAX_TALLY_GROUPS + 1) as i64});
        self.bounded_for(limit, limit, async {
            self.votes.aggregate(pipeline).max_time(limit).await?.try_collect().await
        })
        .await
    }

    /// Whether the server fills only the first accumulator of a `$group` (FerretDB 1.x, its issue
    /// 4616): then the counts and the rank sums are two aggregations. Asked once.
    async fn one_accumulator_per_group(&self, limit: Duration) -> Result<bool, StoreError> {
        if let Some(known) = self.one_accumulator.get() {
            return Ok(*known);
        }
        let info = self
            .bounded_for(limit, limit, async { self.client.database("admin").run_command(doc! {"buildInfo": 1}).await })
            .await?;
        Ok(*self.one_accumulator.get_or_init(|| info.contains_key("ferretdbVersion")))
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

/// Which votes of the log a tally counts, by when they were logged (`logged_at`, the time the
/// consumer wrote them, in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Every vote.
    Any,
    /// The votes logged before this time, and those with no `logged_at`: a read of the whole log.
    Before(i64),
    /// The votes logged at or after `from` (and before `to`, if given): a range of the
    /// `logged_order` index.
    Since { from: i64, to: Option<i64> },
}

impl Logged {
    /// The condition on `logged_at`, if any.
    fn condition(self) -> Option<Document> {
        match self {
            Logged::Any => None,
            Logged::Before(at) => Some(doc! {"$not": {"$gte": DateTime::from_millis(at)}}),
            Logged::Since { from, to } => {
                let mut range = doc! {"$gte": DateTime::from_millis(from)};
                if let Some(to) = to {
                    range.insert("$lt", DateTime::from_millis(to));
                }
                Some(range)
            }
        }
    }
}

/// Where a page's walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// A latest page, read at this time: its first slab has no upper bound (a vote stamped by a
    /// clock ahead of this one is still the newest).
    Now(i64),
    /// A cursor page: the votes strictly older than this `received_at`.
    Below(i64),
}

/// One query of a walk: the votes received in `[lower_ms, upper_ms)`, either end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slab {
    lower_ms: Option<i64>,
    upper_ms: Option<i64>,
}

impl Slab {
    fn range(&self) -> Option<Document> {
        let mut range = Document::new();
        if let Some(lower) = self.lower_ms {
            range.insert("$gte", DateTime::from_millis(lower));
        }
        if let Some(upper) = self.upper_ms {
            range.insert("$lt", DateTime::from_millis(upper));
        }
        (!range.is_empty()).then_some(range)
    }
}

/// The slabs of one page, newest first: contiguous (each one's upper bound is the last one's
/// lower bound), so that together they are the unbounded order below the top, however they are
/// sized.
#[derive(Debug)]
struct SlabWalk {
    top: Top,
    /// The next slab's upper bound; `None` before the first slab.
    upper_ms: Option<i64>,
    first_ms: i64,
    width_ms: i64,
    oldest_ms: Option<i64>,
    newest_ms: Option<i64>,
    finished: bool,
}

impl SlabWalk {
    fn new(top: Top, first_ms: i64, oldest_ms: Option<i64>, newest_ms: Option<i64>) -> Self {
        let first_ms = first_ms.max(1);
        SlabWalk { top, upper_ms: None, first_ms, width_ms: first_ms, oldest_ms, newest_ms, finished: false }
    }

    /// The next slab, given how many votes the last one held (`None` before the first); `None`
    /// once a slab without a lower bound was read.
    fn next(&mut self, last_found: Option<usize>) -> Option<Slab> {
        if self.finished {
            return None;
        }
        let (top_ms, upper) = match (self.top, self.upper_ms) {
            (Top::Now(now), None) => (now, None),
            (Top::Below(below), None) => (below, Some(below)),
            (Top::Now(top) | Top::Below(top), Some(upper)) => (top, Some(upper)),
        };
        let from = upper.unwrap_or(top_ms);
        let mut lower = from.saturating_sub(self.width_ms);
        match (last_found, self.newest_ms) {
            // Nothing in the last slab and the newest vote known lies further down: the walk
            // goes straight to it instead of widening across the gap.
            (Some(0), Some(newest)) if newest < lower => {
                lower = newest.saturating_sub(self.first_ms);
                self.width_ms = self.first_ms;
            }
            _ => {}
        }
        self.width_ms = self.width_ms.saturating_mul(SLAB_GROWTH);
        let reach_ms = WIDEST_REACH.as_millis() as i64;
        if top_ms.saturating_sub(lower) > reach_ms || self.oldest_ms.is_some_and(|oldest| lower <= oldest) {
            self.finished = true;
            return Some(Slab { lower_ms: None, upper_ms: upper });
        }
        self.upper_ms = Some(lower);
        Some(Slab { lower_ms: Some(lower), upper_ms: upper })
    }
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

/// The counted votes of one (band, album, route): what every tally is folded from.
#[derive(Debug, Clone, PartialEq)]
pub struct TallyGroup {
    pub name: String,
    pub album: String,
    /// As logged; a route this build does not know is counted in the total and the bands only.
    pub route: String,
    pub votes: u64,
    pub rank_sum: f64,
}

impl TallyGroup {
    /// Whether `filter` selects this group's votes, as the same filter would in MongoDB.
    fn matches(&self, filter: &Filter) -> bool {
        filter.band.as_ref().is_none_or(|band| *band == self.name)
            && filter.album.as_ref().is_none_or(|album| *album == self.album)
            && filter.route.is_none_or(|route| route.as_str() == self.route)
    }
}

/// Groups by (band, album, route).
pub type Groups = BTreeMap<[String; 3], TallyGroup>;

/// Adds `group`'s votes and rank sum to its (band, album, route) in `groups`.
pub fn add_group(groups: &mut Groups, group: TallyGroup) {
    let key = [group.name.clone(), group.album.clone(), group.route.clone()];
    match groups.entry(key) {
        std::collections::btree_map::Entry::Occupied(mut kept) => {
            let kept = kept.get_mut();
            kept.votes += group.votes;
            kept.rank_sum += group.rank_sum;
        }
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(group);
        }
    }
}

/// Reads the aggregation's documents into the counted votes' groups: the refused votes' groups
/// are dropped, and a group's counts and rank sums, when two aggregations gave them, are joined.
fn tally_groups(documents: &[Document]) -> Result<Vec<TallyGroup>, StoreError> {
    let mut groups = Groups::new();
    for document in documents {
        let Ok(key) = document.get_document("_id") else { continue };
        let text = |field: &str| key.get_str(field).unwrap_or_default().to_owned();
        // Documents logged before votes had a status were all counted.
        if text("status") == VoteStatus::Refused.as_str() {
            continue;
        }
        add_group(
            &mut groups,
            TallyGroup {
                name: text("name"),
                album: text("album"),
                route: text("route"),
                votes: number(document.get("votes")) as u64,
                rank_sum: number(document.get("rank_sum")),
            },
        );
    }
    if groups.len() > MAX_TALLY_GROUPS {
        return Err(StoreError::TooManyGroups);
    }
    Ok(groups.into_values().collect())
}

/// Sums the groups `filter` selects into the per-band, per-album and per-route tallies.
pub fn fold_groups(groups: &[TallyGroup], filter: &Filter) -> LogTallies {
    let mut bands: BTreeMap<&str, u64> = BTreeMap::new();
    let mut albums: BTreeMap<(&str, &str), (u64, f64)> = BTreeMap::new();
    let mut routes: BTreeMap<Route, u64> = BTreeMap::new();
    let mut total = 0;
    for group in groups.iter().filter(|group| group.matches(filter)) {
        total += group.votes;
        *bands.entry(&group.name).or_default() += group.votes;
        let entry = albums.entry((&group.name, &group.album)).or_default();
        entry.0 += group.votes;
        entry.1 += group.rank_sum;
        if let Ok(route) = group.route.parse::<Route>() {
            *routes.entry(route).or_default() += group.votes;
        }
    }
    let mut tallies = LogTallies {
        total,
        bands: bands.into_iter().map(|(name, votes)| BandTally { name: name.to_owned(), votes }).collect(),
        albums: albums
            .into_iter()
            .map(|((name, album), (votes, rank_sum))| AlbumTally {
                name: name.to_owned(),
                album: album.to_owned(),
                votes,
                rank_avg: if votes == 0 { 0.0 } else { rank_sum / votes as f64 },
            })
            .collect(),
        routes: routes.into_iter().map(|(route, votes)| RouteTally { route, votes }).collect(),
        as_of: None,
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

    /// The slabs of a walk when every slab holds `found` votes.
    fn slabs(mut walk: SlabWalk, found: impl Fn(&Slab) -> usize) -> Vec<Slab> {
        let mut slabs = Vec::new();
        let mut last = None;
        while let Some(slab) = walk.next(last) {
            assert!(slabs.len() < 100, "the walk ends: {slabs:?}");
            last = Some(found(&slab));
            slabs.push(slab);
        }
        slabs
    }

    fn contiguous(slabs: &[Slab], top: Option<i64>) {
        assert_eq!(slabs[0].upper_ms, top, "the first slab starts at the top");
        for pair in slabs.windows(2) {
            assert_eq!(pair[1].upper_ms, pair[0].lower_ms, "no gap and no overlap: {slabs:?}");
        }
        assert_eq!(slabs.last().unwrap().lower_ms, None, "the last slab has no lower bound");
    }

    #[test]
    fn slabs_widen_until_the_oldest_vote_then_drop_the_bound() {
        let (top, hour) = (1_764_201_600_000, 3_600_000);
        let walk = SlabWalk::new(Top::Now(top), 100, Some(top - hour), None);
        let slabs = slabs(walk, |_| 0);
        contiguous(&slabs, None);
        let widths: Vec<_> = slabs.iter().filter_map(|s| Some(s.upper_ms.unwrap_or(top) - s.lower_ms?)).collect();
        assert_eq!(widths, [100, 400, 1600, 6400, 25_600, 102_400, 409_600, 1_638_400], "×4 each time");

        let slabs = self::slabs(SlabWalk::new(Top::Below(top), 100, None, None), |_| 0);
        contiguous(&slabs, Some(top));
        let reach = top - slabs[slabs.len() - 2].lower_ms.unwrap();
        assert!(reach <= WIDEST_REACH.as_millis() as i64, "{reach}");
        assert!(slabs.len() > 10);

        let only = self::slabs(SlabWalk::new(Top::Below(top), 100, Some(top), None), |_| 0);
        assert_eq!(only, [Slab { lower_ms: None, upper_ms: Some(top) }], "nothing older than the top");
        assert_eq!(self::slabs(SlabWalk::new(Top::Below(5), 100, None, None), |_| 0).last().unwrap().lower_ms, None);
    }

    #[test]
    fn a_slab_below_an_empty_one_starts_at_the_newest_vote() {
        let (now, hour) = (1_764_201_600_000, 3_600_000);
        let newest = now - hour;
        let walk = SlabWalk::new(Top::Now(now), 50, Some(now - 10 * hour), Some(newest));
        let slabs = slabs(walk, |slab| usize::from(slab.lower_ms.is_none_or(|lower| lower <= newest)));
        contiguous(&slabs, None);
        assert_eq!(slabs[0].lower_ms, Some(now - 50), "the first slab is the usual one");
        assert_eq!(slabs[1], Slab { lower_ms: Some(newest - 50), upper_ms: Some(now - 50) }, "then the jump");
        assert_eq!(slabs[2], Slab { lower_ms: Some(newest - 250), upper_ms: Some(newest - 50) }, "then ×4 from there");

        // A newest vote above the empty slab (a clock ahead) does not move the walk.
        let walk = SlabWalk::new(Top::Now(now), 50, None, Some(now + hour));
        assert_eq!(slabs_of_two(walk)[1], Slab { lower_ms: Some(now - 250), upper_ms: Some(now - 50) });
    }

    fn slabs_of_two(mut walk: SlabWalk) -> [Slab; 2] {
        let first = walk.next(None).unwrap();
        [first, walk.next(Some(0)).unwrap()]
    }

    #[test]
    fn a_full_latest_page_sizes_the_next_first_slab() {
        let vote = |ms: i64| LogDocument {
            id: format!("v-{ms}"),
            vote_id: None,
            name: "Alux Nahual".into(),
            album: "Conquista".into(),
            year: 1985,
            rank: 5.0,
            route: Route::Http,
            voter_id: None,
            received_at: DateTime::from_millis(ms),
            kafka: bandvote_domain::KafkaPosition { partition: 0, offset: 0 },
            status: VoteStatus::Counted,
            reason: None,
            logged_at: None,
        };
        let shape = LogShape::default();
        assert_eq!(shape.walk(Top::Now(10_000)).first_ms, FIRST_SLAB.as_millis() as i64);
        let page: Vec<_> = (0..21).map(|i| vote(10_000 - i * 3)).collect();
        shape.learn(&page, 21, true);
        assert_eq!(shape.walk(Top::Now(10_000)).first_ms, 120, "two spans of 60 ms");
        assert_eq!(LogShape::known(&shape.newest_ms), Some(10_000));
        shape.learn(&page[..5], 21, true);
        assert_eq!(shape.walk(Top::Now(10_000)).first_ms, 120, "a page that is not full says nothing of the rate");
        let sparse: Vec<_> = (0..21).map(|i| vote(10_000_000 - i * 60_000)).collect();
        shape.learn(&sparse, 21, false);
        assert_eq!(shape.walk(Top::Now(10_000)).first_ms, 120, "nor does a filtered one");
        assert_eq!(LogShape::known(&shape.newest_ms), Some(10_000_000), "but its newest vote counts");
        shape.learn(&sparse, 21, true);
        assert_eq!(shape.walk(Top::Now(10_000)).first_ms, FIRST_SLAB_MAX.as_millis() as i64, "within bounds");
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
        let group = |name: &str, album: &str, route: &str, status: Option<&str>, field: &str, value: Bson| {
            let mut key = doc! {"name": name, "album": album, "route": route};
            if let Some(status) = status {
                key.insert("status", status);
            }
            doc! {"_id": key, field: value}
        };
        let keys = [
            ("Alux Nahual", "Conquista", "grpc", 3, 15.0),
            ("Alux Nahual", "Conquista", "http", 1, 1.0),
            ("Bohemia Suburbana", "Mil palabras", "http", 5, 50.0),
            ("Alux Nahual", "Alux Nahual", "grpc", 1, 2.5),
        ];
        // As two aggregations give them (FerretDB): counts, then rank sums in another order; the
        // last group's documents predate `status`. Refused votes are groups of their own.
        let status = |n: usize| (n < 3).then_some("counted");
        let mut documents: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(n, (b, a, r, v, _))| group(b, a, r, status(n), "votes", Bson::Int32(*v)))
            .collect();
        documents.extend(
            keys.iter()
                .enumerate()
                .rev()
                .map(|(n, (b, a, r, _, s))| group(b, a, r, status(n), "rank_sum", Bson::Double(*s))),
        );
        documents.push(group("Alux Nahual", "Conquista", "grpc", Some("refused"), "votes", Bson::Int32(7)));
        let groups = tally_groups(&documents).expect("groups");
        // As one aggregation gives them: both fields in one document.
        let one: Vec<_> = keys
            .iter()
            .map(|(b, a, r, v, s)| {
                let mut document = group(b, a, r, Some("counted"), "votes", Bson::Int64(i64::from(*v)));
                document.insert("rank_sum", *s);
                document
            })
            .collect();
        assert_eq!(tally_groups(&one).expect("groups"), groups, "one aggregation or two, the same groups");
        let tallies = fold_groups(&groups, &Filter::default());
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

        // A filter folds only its groups, as the same filter in MongoDB would select them.
        let alux = Filter { band: Some("Alux Nahual".into()), ..Filter::default() };
        let tallies = fold_groups(&groups, &alux);
        assert_eq!((tallies.total, tallies.bands.len(), tallies.albums.len()), (5, 1, 2));
        let grpc = Filter { band: Some("Alux Nahual".into()), album: None, route: Some(Route::Grpc) };
        assert_eq!(fold_groups(&groups, &grpc).total, 4);
        let album = Filter { band: None, album: Some("Mil palabras".into()), route: Some(Route::Http) };
        assert_eq!(fold_groups(&groups, &album).total, 5);
        let nobody = Filter { band: Some("alux nahual".into()), ..Filter::default() };
        assert_eq!(fold_groups(&groups, &nobody), LogTallies::default(), "exact match, as in MongoDB");
    }
}
