//! Stage 1: the consumer's catch-up through a backlog, next to the bare consume and insert_many.

use super::*;

impl Suite<'_> {
    pub(super) async fn catch_up(&mut self, round: usize, report: &mut SuiteReport) -> anyhow::Result<()> {
        let backlog = self.plan.backlog;
        eprintln!("bench: catch-up {round}: producing a backlog of {backlog} votes");
        let kafka = self.stack.kafka.url();
        let produced = peers::kafka_produce(&kafka, Stack::TOPIC, &format!("backlog{round}"), backlog).await?;
        report.peers.push(produced);
        self.accepted += backlog;
        report.bare_consume.push(peers::kafka_consume(&kafka, Stack::TOPIC, self.accepted).await?);
        let mongo = self.stack.mongo.url();
        let documents = self.plan.insert_documents;
        report.peers.push(peers::insert_many(&mongo, Stack::DATABASE, &format!("c{round}"), documents, 500).await?);

        eprintln!("bench: catch-up {round}: one consumer replica");
        let counted_before = self.counted().await?;
        let started = Instant::now();
        self.stack.spawn_consumer(0)?;
        let pid = *self.stack.consumer_pids().first().context("the consumer runs")?;
        let meter = CpuMeter::start(&[pid])?;
        let mut timeline = Vec::new();
        let deadline = started + Duration::from_secs(1800);
        loop {
            let counted = self.counted().await?.saturating_sub(counted_before);
            let logged = self.logged().await;
            timeline.push((started.elapsed().as_secs_f64(), counted, logged));
            if counted >= backlog && logged >= backlog {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the consumer did not catch up within 30 minutes: {counted} counted, {logged} logged of {backlog}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let total_s = started.elapsed().as_secs_f64();
        let cpu = meter.used()?;
        let consumer_memory = system::memory(pid)?;
        self.stack.terminate_consumer(0);
        let rate = |pick: fn(&(f64, u64, u64)) -> u64| middle_rate(&timeline, pick, backlog);
        let catchup = CatchUp {
            backlog,
            counted_per_s: rate(|point| point.1),
            logged_per_s: rate(|point| point.2),
            total_s,
            consumer_cpu_us_per_vote: system::micros_per(cpu, backlog),
            consumer_memory,
            timeline: thin(&timeline, 0.5),
        };
        eprintln!(
            "bench: catch-up {round}: {:.0} counted/s, {:.0} logged/s, {total_s:.1} s",
            catchup.counted_per_s, catchup.logged_per_s
        );
        report.catchups.push(catchup);
        Ok(())
    }
}

/// Votes per second between the points where 5% and 95% of `total` were done.
fn middle_rate(timeline: &[(f64, u64, u64)], pick: fn(&(f64, u64, u64)) -> u64, total: u64) -> f64 {
    let at = |share: f64| timeline.iter().find(|point| pick(point) as f64 >= share * total as f64);
    match (at(0.05), at(0.95)) {
        (Some(low), Some(high)) if high.0 > low.0 => (pick(high) - pick(low)) as f64 / (high.0 - low.0),
        _ => 0.0,
    }
}

/// The points of a timeline at least `every` seconds apart, and the last.
fn thin(timeline: &[(f64, u64, u64)], every: f64) -> Vec<(f64, u64, u64)> {
    let mut kept: Vec<(f64, u64, u64)> = Vec::new();
    for point in timeline {
        if kept.last().is_none_or(|last| point.0 - last.0 >= every) {
            kept.push(*point);
        }
    }
    if let (Some(last), Some(kept_last)) = (timeline.last(), kept.last())
        && last.0 > kept_last.0
    {
        kept.push(*last);
    }
    kept
}
