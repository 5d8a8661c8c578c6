//! What a chaos run found, and its Markdown report.

use std::{fmt::Write as _, time::Duration};

use bandvote_consumer::audit::Counts;

use crate::{capacity::Search, load::Ledger};

/// How one fault went.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub fault: String,
    /// From the fault until the stage it hit had caught up (or until the run gave up on it).
    pub recovered_after: Duration,
    /// Answers refusing a vote (503 / UNAVAILABLE / RESOURCE_EXHAUSTED / no answer) meanwhile.
    pub refused: u64,
    /// Why the stage did not recover, when it did not.
    pub failure: Option<String>,
    /// What else the fault showed (the partitions sought back after a Redis loss, ...).
    pub note: String,
}

/// One consumer replica as its own metrics showed it while five ran.
#[derive(Debug, Clone)]
pub struct ReplicaCheck {
    pub replica: usize,
    /// `bandvote_consumer_assigned_partitions`.
    pub assigned: u64,
    /// `bandvote_consumer_votes_counted_total`.
    pub counted: u64,
    /// Why its metrics could not be read, if they could not.
    pub unreadable: Option<String>,
}

impl ReplicaCheck {
    pub fn worked(&self) -> bool {
        self.assigned >= 1 && self.counted >= 1
    }
}

/// Partition 0's leader before and after its node was killed.
#[derive(Debug, Clone, Copy)]
pub struct LeaderChange {
    pub before: usize,
    /// The node that led it while the old leader was down (`None`: no other node took over).
    pub after: Option<usize>,
}

impl LeaderChange {
    pub fn changed(&self) -> bool {
        self.after.is_some_and(|after| after != self.before)
    }
}

/// The rate offered during the faults, and where it came from.
#[derive(Debug, Clone, Default)]
pub struct Offered {
    /// Votes per second.
    pub rate: u32,
    /// The end-to-end capacity the rate is a share of (none for a fixed `--rate`).
    pub capacity: Option<u32>,
    pub share: f64,
    /// The measurement, unless the capacity was given.
    pub search: Option<Search>,
}

/// What the run found.
#[derive(Debug, Default)]
pub struct Report {
    pub elapsed: Duration,
    pub offered: Offered,
    pub ledger: Ledger,
    pub recoveries: Vec<Recovery>,
    /// The consumer replicas while five ran.
    pub replicas: Vec<ReplicaCheck>,
    pub leader: Option<LeaderChange>,
    /// Whether the audit ran (the counts below come from it).
    pub audited: bool,
    pub redis: Counts,
    pub log: Counts,
    pub kafka_records: u64,
    pub kafka_distinct: u64,
    /// Accepted votes missing from the log (`None`: the log could not be read).
    pub lost: Option<u64>,
    /// Log documents whose vote was never accepted (must be none).
    pub unknown: Option<u64>,
    /// Distinct vote ids in the log.
    pub logged_distinct: Option<u64>,
    pub redis_differences: Vec<String>,
    pub log_differences: Vec<String>,
    pub kafka_differences: Vec<String>,
    /// Votes the rebuild added after Redis was flushed.
    pub rebuilt: i64,
    pub rebuild_differences: Vec<String>,
    /// Parts of the reckoning that could not be done, and why.
    pub problems: Vec<String>,
}

/// Consumer replicas while the run scales up.
pub const REPLICAS: usize = 5;

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.failed_recovery().is_none()
            && self.replicas.len() == REPLICAS
            && self.replicas.iter().all(ReplicaCheck::worked)
            && self.leader.is_some_and(|l| l.changed())
            && self.lost == Some(0)
            && self.unknown == Some(0)
            && self.duplicates() == Some(0)
            && self.ledger.unexpected.is_empty()
            && self.ledger.pending == 0
            && self.redis_differences.is_empty()
            && self.log_differences.is_empty()
            && self.kafka_differences.is_empty()
            && self.rebuild_differences.is_empty()
            && self.rebuilt == self.ledger.accepted.len() as i64
    }

    /// The recovery that failed, if one did (the run injects no fault after it).
    pub fn failed_recovery(&self) -> Option<&Recovery> {
        self.recoveries.iter().find(|r| r.failure.is_some())
    }

    /// Documents beyond the distinct vote ids in the log, plus votes counted beyond the distinct
    /// votes (those accepted, or more if Kafka holds votes whose client gave up).
    pub fn duplicates(&self) -> Option<u64> {
        let logged_twice = self.log.total.saturating_sub(self.logged_distinct?);
        let distinct = (self.ledger.accepted.len() as u64).max(self.kafka_distinct);
        self.audited.then(|| logged_twice + self.redis.total.saturating_sub(distinct))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let o = &self.offered;
        let source = match (&o.capacity, &o.search) {
            (Some(capacity), Some(_)) => format!(
                "{} of the end-to-end capacity measured on this stack before the faults ({capacity} votes/s)",
                o.share
            ),
            (Some(capacity), None) => format!("{} of the given end-to-end capacity ({capacity} votes/s)", o.share),
            (None, _) => "a fixed rate (no capacity measured)".to_owned(),
        };
        let _ = writeln!(
            out,
            "Chaos run {verdict} in {:.0} s: offered {} votes/s over HTTP and gRPC, {source}; Kafka on 3 nodes \
             (replication factor 3, min.insync.replicas=2), 2 to {REPLICAS} consumers.\n",
            self.elapsed.as_secs_f64(),
            o.rate
        );
        if let Some(failed) = self.failed_recovery() {
            let _ = writeln!(
                out,
                "**Recovery failed**: {}: {}. No fault was injected after it; the load stopped, refused votes were \
                 re-sent (for a bounded time) and counting and logging had a bounded time to settle before the \
                 reckoning below.\n",
                failed.fault.trim_start_matches([' ', '…']),
                failed.failure.as_deref().unwrap_or_default()
            );
        }
        if let Some(search) = &o.search {
            write_search(&mut out, search);
        }
        self.write_votes(&mut out);
        let _ = writeln!(out, "\n| fault | recovered after | refused meanwhile | notes |\n|---|---:|---:|---|");
        for r in &self.recoveries {
            let after = match &r.failure {
                None => format!("{:.1} s", r.recovered_after.as_secs_f64()),
                Some(_) => format!("**not within {:.0} s**", r.recovered_after.as_secs_f64()),
            };
            let note = r.failure.as_deref().map_or(r.note.clone(), |why| format!("{why} {}", r.note));
            let _ = writeln!(out, "| {} | {after} | {} | {} |", r.fault, r.refused, note.trim());
        }
        self.write_replicas(&mut out);
        if let Some(leader) = self.leader {
            let after = leader.after.map_or("no other node".to_owned(), |n| format!("node {n}"));
            let _ = writeln!(out, "\nPartition 0's leader: node {} before the kill, {after} after it.", leader.before);
        }
        for (what, found) in [
            ("Redis against the accepted votes", &self.redis_differences),
            ("MongoDB against the accepted votes", &self.log_differences),
            ("Kafka against the accepted votes", &self.kafka_differences),
            ("Redis after the rebuild against before the flush", &self.rebuild_differences),
        ] {
            let state = if !self.audited {
                "not compared (the audit did not run)".to_owned()
            } else if found.is_empty() {
                "equal per band, album, route and second".to_owned()
            } else {
                found.join("; ")
            };
            let _ = writeln!(out, "\n{what}: {state}");
        }
        for problem in &self.problems {
            let _ = writeln!(out, "\nnot reckoned: {problem}");
        }
        for unexpected in self.ledger.unexpected.iter().take(10) {
            let _ = writeln!(out, "\nunexpected answer: {unexpected}");
        }
        out
    }

    fn write_votes(&self, out: &mut String) {
        let l = &self.ledger;
        let known = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        let _ = writeln!(out, "| | votes |\n|---|---:|");
        let _ = writeln!(out, "| sent (distinct vote ids) | {} |", l.sent);
        let _ = writeln!(out, "| accepted | {} |", l.accepted.len());
        let _ = writeln!(out, "| answers refusing a vote (then re-sent with the same id) | {} |", l.refused);
        let _ = writeln!(out, "| never accepted by the end | {} |", l.pending);
        let _ = writeln!(out, "| answers that were neither accepted nor refused | {} |", l.unexpected.len());
        let _ = writeln!(out, "| counted in Redis | {} |", self.redis.total);
        let _ = writeln!(out, "| logged in MongoDB | {} |", self.log.total);
        let _ =
            writeln!(out, "| records in Kafka / distinct votes | {} / {} |", self.kafka_records, self.kafka_distinct);
        let _ = writeln!(out, "| **lost** (accepted, not logged) | **{}** |", known(self.lost));
        let _ = writeln!(out, "| **duplicates** (logged or counted twice) | **{}** |", known(self.duplicates()));
        let _ = writeln!(out, "| logged but never accepted | {} |", known(self.unknown));
        let _ = writeln!(out, "| counted again by the rebuild after a Redis flush | {} |", self.rebuilt);
    }

    fn write_replicas(&self, out: &mut String) {
        if self.replicas.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\nWith {REPLICAS} consumers, from each replica's own metrics:\n\n| replica | partitions assigned | votes \
             counted since it started |\n|---:|---:|---:|"
        );
        for r in &self.replicas {
            match &r.unreadable {
                None => _ = writeln!(out, "| {} | {} | {} |", r.replica, r.assigned, r.counted),
                Some(why) => _ = writeln!(out, "| {} | ? | ? ({why}) |", r.replica),
            }
        }
        let idle: Vec<String> = self.replicas.iter().filter(|r| !r.worked()).map(|r| r.replica.to_string()).collect();
        if idle.is_empty() {
            let _ = writeln!(out, "\nEvery one of the {REPLICAS} replicas held partitions and counted votes.");
        } else {
            let _ =
                writeln!(out, "\nReplicas {} held no partition or counted nothing: the run fails.", idle.join(", "));
        }
    }
}

fn write_search(out: &mut String, search: &crate::capacity::Search) {
    use crate::capacity::GRACE;
    let found = search.capacity.map_or("none found".to_owned(), |c| format!("{c} votes/s"));
    let _ = writeln!(
        out,
        "End-to-end capacity: {found}, the highest step that passed: at least 99% of the offered votes accepted, \
         and every accepted vote counted in Redis within {} s after the step.\n",
        GRACE.as_secs()
    );
    let _ = writeln!(
        out,
        "| offered votes/s | s | started | accepted | counted in time | load generator CPU (cores) | machine CPU busy | \
         step |\n|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for s in &search.steps {
        let verdict = if s.passed() {
            "passed"
        } else if s.stalled {
            "failed: votes waited on answers"
        } else if !s.load_kept_up() {
            "failed: the load generator fell behind"
        } else {
            "failed"
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} of {} | {:.2} | {:.0}% | {verdict} |",
            s.rate,
            s.seconds,
            s.started,
            s.accepted,
            s.counted,
            s.accepted_by_end,
            s.load_cores,
            100.0 * s.machine_busy
        );
    }
    let most = search.steps.iter().map(|s| s.load_cores).fold(0.0, f64::max);
    let generator_limited = search.steps.iter().any(|s| !s.load_kept_up() && !s.stalled);
    let limit = if generator_limited {
        "In a step the load generator could not start every vote due while few votes waited on answers: there \
         the generator, not the pipeline, was the limit."
            .to_owned()
    } else {
        format!(
            "The load generator was never what fell behind (this process used at most {most:.2} cores): the pipeline \
             set the limit; on these 2 cores the generator's share still takes CPU from the pipeline."
        )
    };
    let cut = if search.cut_short { " The search stopped at its bound on steps or time." } else { "" };
    let _ = writeln!(out, "\n{limit}{cut}\n");
}
