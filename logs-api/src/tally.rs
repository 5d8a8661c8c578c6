//! Tallies computed in the background, so that no request waits for an aggregation over the log.
//!
//! One refresher task recomputes the log's (band, album, route) groups every interval
//! (`TALLY_CACHE`), from start-up until shutdown; every tally, filtered or not, is folded from the
//! latest groups (a filter is an exact match on those three fields), so a filter asked for the
//! first time is answered as soon as the unfiltered tally is. A computation that takes longer than
//! the interval is followed by a pause as long as itself: tallies never keep the log store busy
//! more than half of the time. A request answers at once with the latest tally and the time it is
//! as of; only a request before the first computation waits for it, at most `TALLY_WAIT`.
//!
//! The unfiltered groups are not read from the whole log each time ([`Incremental`]): the groups
//! of the votes logged more than `TALLY_SETTLE` ago are kept, and each computation reads only the
//! votes logged since (a range of the `logged_order` index), so its cost follows the logging rate,
//! not the log's size. A vote whose write ends more than `TALLY_SETTLE` after its `logged_at`
//! (a stalled log store, a consumer's clock behind this instance's) is missed by that reading;
//! every `TALLY_RECOUNT` the whole log is counted again in the background and replaces the kept
//! groups, and what it corrected is counted in `bandvote_logs_api_tally_corrections_total`.
//!
//! Only when the whole log has more groups than [`MAX_TALLY_GROUPS`](crate::store::MAX_TALLY_GROUPS)
//! (the unfiltered tally says so) does a filter get its own refresher and query, from the first
//! request that asks for it until it has not been asked for in [`FILTER_IDLE`] (or longer
//! intervals), or until [`MAX_TALLY_FILTERS`] other filters were asked for more recently.
//!
//! Invariant: the number of queries in flight does not depend on the number of requests (requests
//! only read what the refreshers wrote): one per tally, and for the unfiltered one, while a
//! recount runs, that recount besides.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use bandvote_domain::LogTallies;
use mongodb::bson::DateTime;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    query::Filter,
    store::{
        Groups, Logged, MAX_TALLY_GROUPS, StoreError, TallyGroup, VoteStore, add_group, fold_groups, rfc3339_millis,
    },
};

/// How many filtered tallies with their own refresher (only when the whole log has too many
/// groups) are kept up to date at most; the one asked for least recently is dropped first. The
/// unfiltered tally is not one of them and is never dropped.
pub const MAX_TALLY_FILTERS: usize = 16;

/// A filtered tally nobody asked for in this long (or in three intervals, if that is longer)
/// stops being recomputed.
pub const FILTER_IDLE: Duration = Duration::from_secs(60);

/// The shortest interval between two computations of one tally (`TALLY_CACHE=0s` means this).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
pub struct TallySettings {
    /// How often each tally is recomputed (at least [`MIN_INTERVAL`] apart).
    pub interval: Duration,
    /// How long a request waits for a filter's first tally.
    pub wait: Duration,
    /// How long one computation may take in MongoDB.
    pub query_timeout: Duration,
    /// How long after its `logged_at` a vote is surely readable in the log: the unfiltered
    /// tally keeps the groups of the votes logged before that and reads only the newer ones.
    pub settle: Duration,
    /// How often the unfiltered tally counts the whole log again, in the background.
    pub recount: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    #[error(
        "the tallies for this filter are being computed for the first time and took longer than {0:?}; ask again in a moment"
    )]
    Pending(Duration),
    /// The last computation failed and there is no earlier tally to answer with.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// What a refresher last wrote for its tally.
#[derive(Debug, Clone, Default)]
struct Latest {
    computed: Option<Arc<Computed>>,
    /// The last computation's error, if it failed.
    failed: Option<Arc<StoreError>>,
}

#[derive(Debug)]
struct Computed {
    as_of: DateTime,
    /// The groups of the refresher's own filter.
    groups: Vec<TallyGroup>,
}

/// A filtered tally that is kept up to date.
struct Tracked {
    /// Tells this entry from a later one for the same filter.
    serial: u64,
    latest: watch::Receiver<Latest>,
    last_asked: Instant,
    stop: CancellationToken,
}

#[derive(Default)]
struct Filters {
    tracked: HashMap<Filter, Tracked>,
    next_serial: u64,
}

struct Inner {
    store: VoteStore,
    settings: TallySettings,
    unfiltered: watch::Receiver<Latest>,
    filters: Mutex<Filters>,
    stop: CancellationToken,
}

/// The tallies of one API instance, each kept up to date by its own background task.
#[derive(Clone)]
pub struct TallyRefresher {
    inner: Arc<Inner>,
}

impl TallyRefresher {
    /// Starts the unfiltered tally's refresher; every task stops when `stop` is cancelled.
    pub fn start(store: VoteStore, mut settings: TallySettings, stop: CancellationToken) -> Self {
        settings.interval = settings.interval.max(MIN_INTERVAL);
        let (sender, unfiltered) = watch::channel(Latest::default());
        let inner = Arc::new(Inner { store, settings, unfiltered, filters: Mutex::default(), stop });
        let counting = Counting::Incremental(Incremental::new(inner.stop.clone()));
        tokio::spawn(refresh(Arc::downgrade(&inner), counting, None, sender, inner.stop.clone()));
        TallyRefresher { inner }
    }

    /// The latest tally for `filter`: folded from the unfiltered groups, or, when the whole log
    /// has too many groups, from the filter's own refresher (started if nobody asked for it
    /// recently).
    pub async fn get(&self, filter: &Filter) -> Result<LogTallies, TallyError> {
        let wait = self.inner.settings.wait;
        if *filter == Filter::default() {
            record_age(&self.inner.unfiltered.borrow());
        }
        let too_many = matches!(self.inner.unfiltered.borrow().failed.as_deref(), Some(StoreError::TooManyGroups));
        if too_many && *filter != Filter::default() {
            // The filter's own groups: every one of them is the filter's.
            answer(self.track(filter), wait, Filter::default()).await
        } else {
            answer(self.inner.unfiltered.clone(), wait, filter.clone()).await
        }
    }

    fn track(&self, filter: &Filter) -> watch::Receiver<Latest> {
        let mut filters = self.inner.filters.lock().expect("tally filters");
        if let Some(tracked) = filters.tracked.get_mut(filter) {
            tracked.last_asked = Instant::now();
            return tracked.latest.clone();
        }
        if filters.tracked.len() >= MAX_TALLY_FILTERS {
            let oldest = filters.tracked.iter().min_by_key(|(_, t)| t.last_asked).map(|(f, _)| f.clone());
            if let Some(dropped) = oldest.and_then(|f| filters.tracked.remove(&f)) {
                dropped.stop.cancel();
            }
        }
        let serial = filters.next_serial;
        filters.next_serial += 1;
        let (sender, latest) = watch::channel(Latest::default());
        let stop = self.inner.stop.child_token();
        filters.tracked.insert(
            filter.clone(),
            Tracked { serial, latest: latest.clone(), last_asked: Instant::now(), stop: stop.clone() },
        );
        metrics::gauge!("bandvote_logs_api_tally_filters").set(filters.tracked.len() as f64);
        tokio::spawn(refresh(Arc::downgrade(&self.inner), Counting::Whole(filter.clone()), Some(serial), sender, stop));
        latest
    }

    /// Whether a filtered tally refresher should stop because nobody asked for its tally lately;
    /// if so, it is forgotten.
    fn idle(&self, filter: &Filter, serial: u64) -> bool {
        let idle = FILTER_IDLE.max(3 * self.inner.settings.interval);
        let mut filters = self.inner.filters.lock().expect("tally filters");
        let Some(tracked) = filters.tracked.get(filter).filter(|t| t.serial == serial) else {
            // Dropped for a filter asked for more recently.
            return true;
        };
        if tracked.last_asked.elapsed() < idle {
            return false;
        }
        filters.tracked.remove(filter);
        metrics::gauge!("bandvote_logs_api_tally_filters").set(filters.tracked.len() as f64);
        true
    }
}

/// The tally of `filter` folded from what `latest` holds, waiting at most `wait` for a first one.
async fn answer(mut latest: watch::Receiver<Latest>, wait: Duration, filter: Filter) -> Result<LogTallies, TallyError> {
    let settled = |latest: &Latest| latest.computed.is_some() || latest.failed.is_some();
    let waited = tokio::time::timeout(wait, async { latest.wait_for(settled).await.map(|found| found.clone()) }).await;
    let found = match waited {
        Ok(Ok(found)) => found,
        // The refresher is gone (shutdown, or dropped for other filters): what it wrote last.
        Ok(Err(_)) => latest.borrow().clone(),
        Err(_) => return Err(TallyError::Pending(wait)),
    };
    match (found.computed, found.failed) {
        (Some(computed), _) => {
            Ok(LogTallies { as_of: Some(rfc3339_millis(computed.as_of)), ..fold_groups(&computed.groups, &filter) })
        }
        (None, Some(failed)) => Err(TallyError::Store(failed)),
        (None, None) => Err(TallyError::Pending(wait)),
    }
}

/// How a refresher computes its tally's groups.
enum Counting {
    /// From the whole log, each time: a filter's own tally.
    Whole(Filter),
    /// From the votes logged since the last computation: the unfiltered tally.
    Incremental(Incremental),
}

impl Counting {
    fn filter(&self) -> Filter {
        match self {
            Counting::Whole(filter) => filter.clone(),
            Counting::Incremental(_) => Filter::default(),
        }
    }

    /// The groups, with the time they are as of.
    async fn next(&mut self, store: &VoteStore, settings: &TallySettings) -> Result<Computed, StoreError> {
        match self {
            Counting::Whole(filter) => {
                let as_of = DateTime::now();
                let groups = store.count(filter, Logged::Any, settings.query_timeout).await?;
                Ok(Computed { as_of, groups })
            }
            Counting::Incremental(incremental) => incremental.next(store, settings).await,
        }
    }
}

fn add(groups: &mut Groups, more: Vec<TallyGroup>) {
    more.into_iter().for_each(|group| add_group(groups, group));
}

fn groups_of(found: Vec<TallyGroup>) -> Groups {
    let mut groups = Groups::new();
    add(&mut groups, found);
    groups
}

/// How many votes two sets of groups disagree on, group by group.
fn difference(kept: &Groups, counted: &Groups) -> u64 {
    let votes = |groups: &Groups, key: &[String; 3]| groups.get(key).map_or(0, |group| group.votes);
    kept.keys()
        .chain(counted.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|key| votes(kept, key).abs_diff(votes(counted, key)))
        .sum()
}

/// The groups of every vote logged before `below_ms` (or with no `logged_at`).
struct Settled {
    groups: Groups,
    below_ms: i64,
}

/// A recount of the whole log up to a `logged_at`, running in the background.
struct Recount {
    below_ms: i64,
    done: oneshot::Receiver<Result<Vec<TallyGroup>, StoreError>>,
}

/// The unfiltered tally, kept from the votes logged since the last computation.
struct Incremental {
    settled: Option<Settled>,
    recount: Option<Recount>,
    last_recount: Instant,
    stop: CancellationToken,
}

impl Incremental {
    fn new(stop: CancellationToken) -> Self {
        Incremental { settled: None, recount: None, last_recount: Instant::now(), stop }
    }

    async fn next(&mut self, store: &VoteStore, settings: &TallySettings) -> Result<Computed, StoreError> {
        let limit = settings.query_timeout;
        let settle_ms = settings.settle.as_millis() as i64;
        let all = Filter::default();
        self.take_recount(store, limit).await;
        let settled = match &mut self.settled {
            Some(settled) => settled,
            empty => {
                let below_ms = DateTime::now().timestamp_millis() - settle_ms;
                let groups = groups_of(store.count(&all, Logged::Before(below_ms), limit).await?);
                self.last_recount = Instant::now();
                empty.insert(Settled { groups, below_ms })
            }
        };
        let now_ms = DateTime::now().timestamp_millis();
        if now_ms - settle_ms > settled.below_ms {
            let range = Logged::Since { from: settled.below_ms, to: Some(now_ms - settle_ms) };
            add(&mut settled.groups, store.count(&all, range, limit).await?);
            settled.below_ms = now_ms - settle_ms;
        }
        let as_of = DateTime::now();
        let mut groups = settled.groups.clone();
        add(&mut groups, store.count(&all, Logged::Since { from: settled.below_ms, to: None }, limit).await?);
        if groups.len() > MAX_TALLY_GROUPS {
            self.settled = None;
            return Err(StoreError::TooManyGroups);
        }
        let below_ms = settled.below_ms;
        if self.recount.is_none() && self.last_recount.elapsed() >= settings.recount {
            self.start_recount(store, below_ms, limit);
        }
        Ok(Computed { as_of, groups: groups.into_values().collect() })
    }

    fn start_recount(&mut self, store: &VoteStore, below_ms: i64, limit: Duration) {
        let (sender, done) = oneshot::channel();
        let (store, stop) = (store.clone(), self.stop.clone());
        tokio::spawn(async move {
            let all = Filter::default();
            tokio::select! {
                () = stop.cancelled() => {}
                result = store.count(&all, Logged::Before(below_ms), limit) => { let _ = sender.send(result); }
            }
        });
        self.recount = Some(Recount { below_ms, done });
        self.last_recount = Instant::now();
    }

    /// Replaces the settled groups with a finished recount's, brought up to their `below_ms`.
    async fn take_recount(&mut self, store: &VoteStore, limit: Duration) {
        let Some(recount) = &mut self.recount else { return };
        let counted = match recount.done.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Err(oneshot::error::TryRecvError::Closed) => Err(None),
            Ok(result) => result.map_err(Some),
        };
        let recounted_below = recount.below_ms;
        self.recount = None;
        metrics::counter!("bandvote_logs_api_tally_recounts_total", "outcome" => if counted.is_ok() { "ok" } else { "error" }).increment(1);
        let Some(settled) = &mut self.settled else { return };
        let mut counted = match counted {
            Ok(found) => groups_of(found),
            Err(Some(StoreError::TooManyGroups)) => {
                self.settled = None;
                return;
            }
            Err(err) => {
                tracing::warn!(error = ?err, "the tally's recount failed; keeping the counted groups");
                return;
            }
        };
        if settled.below_ms > recounted_below {
            let since = Logged::Since { from: recounted_below, to: Some(settled.below_ms) };
            match store.count(&Filter::default(), since, limit).await {
                Ok(found) => add(&mut counted, found),
                Err(err) => {
                    tracing::warn!(error = %err, "the tally's recount could not be brought up to date; keeping the counted groups");
                    return;
                }
            }
        }
        let corrected = difference(&settled.groups, &counted);
        if corrected > 0 {
            tracing::warn!(
                corrected,
                "the recount of the whole log differs from the tally kept since: votes logged later than TALLY_SETTLE after their logged_at; the recount's groups replace it"
            );
        }
        metrics::counter!("bandvote_logs_api_tally_corrections_total").increment(corrected);
        settled.groups = counted;
    }
}

/// The refresher of one tally: computes it, publishes it, waits for the rest of the interval, and
/// again, until stopped (or, for a filtered tally, until nobody asks for it).
async fn refresh(
    inner: Weak<Inner>,
    mut counting: Counting,
    serial: Option<u64>,
    sender: watch::Sender<Latest>,
    stop: CancellationToken,
) {
    let unfiltered = serial.is_none();
    let filter = counting.filter();
    loop {
        let Some(refresher) = inner.upgrade().map(|inner| TallyRefresher { inner }) else { return };
        if let Some(serial) = serial
            && refresher.idle(&filter, serial)
        {
            return;
        }
        let (store, settings) = (refresher.inner.store.clone(), refresher.inner.settings);
        drop(refresher);
        let started = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = counting.next(&store, &settings) => result,
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("bandvote_logs_api_tally_refreshes_total", "outcome" => outcome).increment(1);
        sender.send_modify(|latest| match result {
            Ok(computed) => {
                latest.computed = Some(Arc::new(computed));
                latest.failed = None;
            }
            Err(err) => {
                tracing::warn!(error = %err, ?filter, "tally refresh failed; answering the previous tally, if any");
                metrics::counter!("bandvote_logs_api_query_errors_total").increment(1);
                latest.failed = Some(Arc::new(err));
            }
        });
        if unfiltered {
            record_age(&sender.borrow());
        }
        // The next computation starts early enough (half as long again as this one took) for its
        // tally to be out before this one is an interval old, and after at least as long a pause
        // as this one took.
        let took = started.elapsed();
        let next = started + settings.interval.saturating_sub(took + took / 2).max(2 * took);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// Sets the unfiltered tally's age gauge (no tally yet: no value).
fn record_age(latest: &Latest) {
    if let Some(computed) = &latest.computed {
        let age_ms = DateTime::now().timestamp_millis() - computed.as_of.timestamp_millis();
        metrics::gauge!("bandvote_logs_api_tally_age_seconds").set(age_ms.max(0) as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(votes: u64) -> Vec<TallyGroup> {
        let group = |name: &str, votes| TallyGroup {
            name: name.into(),
            album: "Conquista".into(),
            route: "http".into(),
            votes,
            rank_sum: votes as f64,
        };
        vec![group("Alux Nahual", votes), group("Viernes Verde", 1)]
    }

    #[tokio::test]
    async fn a_computed_tally_is_answered_with_its_time() {
        let as_of = DateTime::from_millis(1_764_201_600_007);
        let latest = Latest { computed: Some(Arc::new(Computed { as_of, groups: groups(3) })), failed: None };
        let (_sender, receiver) = watch::channel(latest);
        let first = answer(receiver, Duration::from_millis(10), Filter::default()).await.expect("a tally");
        assert_eq!((first.as_of.as_deref(), first.total), (Some("2025-11-27T00:00:00.007Z"), 4));
        let json = serde_json::to_value(&first).unwrap();
        assert_eq!(json["as_of"], "2025-11-27T00:00:00.007Z");
        assert_eq!(json["total"], 4, "the tallies' own fields stay at the top level: {json}");

        let (_sender, receiver) =
            watch::channel(Latest { computed: Some(Arc::new(Computed { as_of, groups: groups(3) })), failed: None });
        let alux = Filter { band: Some("Alux Nahual".into()), ..Filter::default() };
        let filtered = answer(receiver, Duration::from_millis(10), alux).await.expect("a filtered tally");
        assert_eq!((filtered.as_of, filtered.total), (first.as_of, 3), "folded from the same groups");
    }

    #[tokio::test]
    async fn an_older_tally_is_answered_when_the_last_computation_failed() {
        let computed = Some(Arc::new(Computed { as_of: DateTime::now(), groups: groups(5) }));
        let (_sender, receiver) =
            watch::channel(Latest { computed, failed: Some(Arc::new(StoreError::TooManyGroups)) });
        assert_eq!(
            answer(receiver, Duration::from_millis(10), Filter::default()).await.expect("the older tally").total,
            6
        );
    }

    #[tokio::test]
    async fn no_tally_yet_waits_for_the_first_then_gives_up() {
        let (sender, receiver) = watch::channel(Latest::default());
        let started = Instant::now();
        let pending = answer(receiver.clone(), Duration::from_millis(50), Filter::default()).await;
        assert!(matches!(pending, Err(TallyError::Pending(_))), "{pending:?}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let waiting = tokio::spawn(answer(receiver.clone(), Duration::from_secs(5), Filter::default()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.send_modify(|latest| {
            latest.computed = Some(Arc::new(Computed { as_of: DateTime::now(), groups: groups(7) }))
        });
        assert_eq!(waiting.await.unwrap().expect("the first tally").total, 8);

        let (sender, receiver) = watch::channel(Latest::default());
        sender.send_modify(|latest| latest.failed = Some(Arc::new(StoreError::TooManyGroups)));
        assert!(matches!(answer(receiver, Duration::from_secs(5), Filter::default()).await, Err(TallyError::Store(_))));
    }
}
