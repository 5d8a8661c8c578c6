//! The suite's report: Markdown tables, the targets and the charts, from a [`SuiteReport`].

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context as _;

use crate::{
    chart::{self, Bar, BarGroup, Series},
    peers::PeerRun,
    suite::{EndToEnd, Search, SuiteReport},
};

/// Median, lowest and highest of some values.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub count: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Some(Spread { median, low: values[0], high: values[n - 1], count: n })
    }

    fn text(&self) -> String {
        if self.count == 1 {
            return rate(self.median);
        }
        format!("{} ({}–{})", rate(self.median), rate(self.low), rate(self.high))
    }

    fn bar(&self) -> Bar {
        Bar { value: self.median, low: Some(self.low), high: Some(self.high) }
    }
}

fn rate(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.1}") }
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
}

fn check(passed: bool) -> &'static str {
    if passed { "met" } else { "missed" }
}

impl SuiteReport {
    /// Votes per second of a variant's capacity over the rounds (round 0, the estimate, left out).
    pub fn capacity(&self, variant: &str) -> Option<Spread> {
        self.over_rounds(variant, |search| search.votes_per_s)
    }

    fn server_cpu(&self, variant: &str) -> Option<Spread> {
        self.over_rounds(variant, |search| search.server_cpu_us_per_vote)
    }

    fn generator_cpu(&self, variant: &str) -> Option<Spread> {
        self.over_rounds(variant, |search| search.generator_cpu_us_per_request)
    }

    /// One number of a variant's searches, over the rounds (round 0, the estimate, left out).
    fn over_rounds(&self, variant: &str, pick: fn(&Search) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.searches.iter().filter(|s| s.round > 0 && s.variant == variant).filter_map(pick))
    }

    pub fn peer(&self, name: &str) -> Option<Spread> {
        Spread::of(self.peers.iter().filter(|p| p.peer == name).map(|p| p.per_s))
    }

    /// The catch-up rate: the slower of counting and logging, per backlog.
    pub fn catch_up(&self) -> Option<Spread> {
        Spread::of(self.catchups.iter().map(|c| c.counted_per_s.min(c.logged_per_s)))
    }

    /// The targets of the benchmark, each with its numbers: (what, measured, target, met).
    pub fn targets(&self) -> Vec<(String, String, &'static str, bool)> {
        let mut targets = Vec::new();
        for target in &self.plan.targets {
            let name = target.name();
            if let (Some(kafka), Some(noop)) = (self.capacity(name), self.capacity(&format!("{name} (no-op)"))) {
                let ratio = kafka.median / noop.median;
                targets.push((
                    format!("{name}: capacity with Kafka ÷ no-op"),
                    format!("{} ÷ {} = {ratio:.2}", rate(kafka.median), rate(noop.median)),
                    "≥ 0.6",
                    ratio >= 0.6,
                ));
            }
        }
        // The Wasm route against the native route it does the work of: CPU per vote and capacity.
        if let (Some(wasm), Some(native)) = (self.capacity("wasm-vote"), self.capacity("http-vote")) {
            let ratio = wasm.median / native.median;
            targets.push((
                "wasm-vote: capacity ÷ http-vote's".into(),
                format!("{} ÷ {} = {ratio:.2}", rate(wasm.median), rate(native.median)),
                "≥ 0.33",
                ratio >= 1.0 / 3.0,
            ));
        }
        if let (Some(wasm), Some(native)) = (self.server_cpu("wasm-vote"), self.server_cpu("http-vote")) {
            let ratio = wasm.median / native.median;
            targets.push((
                "wasm-vote: CPU per vote ÷ http-vote's".into(),
                format!("{:.0} µs ÷ {:.1} µs = {ratio:.2}", wasm.median, native.median),
                "≤ 3",
                ratio <= 3.0,
            ));
        }
        if let Some(producer) = self.peer("rdkafka producer") {
            for name in ["http-batch", "grpc-batch"] {
                if let Some(batch) = self.capacity(name) {
                    let ratio = batch.median / producer.median;
                    targets.push((
                        format!("{name}: votes/s ÷ bare rdkafka producer"),
                        format!("{} ÷ {} = {ratio:.2}", rate(batch.median), rate(producer.median)),
                        "≥ 0.5",
                        ratio >= 0.5,
                    ));
                }
            }
        }
        let bare_consume = Spread::of(self.bare_consume.iter().map(|p| p.per_s));
        if let (Some(catch_up), Some(consume), Some(insert)) = (self.catch_up(), bare_consume, self.peer("insert_many"))
        {
            let slower = consume.median.min(insert.median);
            let ratio = catch_up.median / slower;
            targets.push((
                "consumer catch-up ÷ slower of bare consume and bare insert_many".into(),
                format!("{} ÷ {} = {ratio:.2}", rate(catch_up.median), rate(slower)),
                "≥ 0.7",
                ratio >= 0.7,
            ));
            if let Some(sustained) = &self.sustained {
                let ratio = catch_up.median / sustained.accepted_per_s;
                targets.push((
                    "consumer catch-up ÷ sustained end-to-end rate".into(),
                    format!("{} ÷ {} = {ratio:.2}", rate(catch_up.median), rate(sustained.accepted_per_s)),
                    "≥ 2",
                    ratio >= 2.0,
                ));
            }
        }
        if let Some(half) = self.e2e.iter().find(|step| step.label == "50%") {
            let (p99, p999) = (half.visible_p99_ms, half.visible_p999_ms);
            targets.push((
                format!("acceptance → Redis at 50% of the pipeline's capacity ({} votes/s)", rate(half.offered_per_s)),
                format!("p99 {} ms, p99.9 {} ms", ms(p99), ms(p999)),
                "p99 ≤ 50 ms, p99.9 ≤ 200 ms",
                p99.is_some_and(|v| v <= 50.0) && p999.is_some_and(|v| v <= 200.0),
            ));
        }
        if let (Some(sustained), Some(reckoning)) = (&self.sustained, &self.reckoning) {
            targets.push((
                format!(
                    "sustained {:.0} s at {} votes/s, counts exact",
                    self.plan.sustain.as_secs_f64(),
                    rate(sustained.offered_per_s)
                ),
                format!(
                    "held: {}, accepted {} = counted {}, logged {} of {}",
                    sustained.passed,
                    reckoning.accepted,
                    reckoning.counted,
                    reckoning.logged_since,
                    reckoning.accepted_since
                ),
                "held and exact",
                sustained.passed && reckoning.exact(),
            ));
        }
        targets
    }

    /// The report in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Profile `{:?}`, {} rounds, {} — {}; took {:.0} s.\n",
            self.plan.profile, self.plan.rounds, self.machine, self.started, self.seconds
        );
        out += "### Ingest capacity (votes/s; median and range over the rounds)\n\n";
        out += "| route | with Kafka | no-op route | Kafka ÷ no-op | ingest CPU µs/vote (Kafka) | (no-op) | generator CPU µs/request |\n|---|--:|--:|--:|--:|--:|--:|\n";
        for target in &self.plan.targets {
            let name = target.name();
            let noop_name = format!("{name} (no-op)");
            let (kafka, noop) = (self.capacity(name), self.capacity(&noop_name));
            let ratio = match (kafka, noop) {
                (Some(k), Some(n)) => format!("{:.2}", k.median / n.median),
                _ => "–".into(),
            };
            let batch = target.votes_per_request(self.plan.batch);
            let label = if batch > 1 { format!("{name} ×{batch}") } else { name.to_owned() };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {ratio} | {} | {} | {} |",
                kafka.map_or("–".into(), |s| s.text()),
                noop.map_or("–".into(), |s| s.text()),
                self.server_cpu(name).map_or("–".into(), |s| rate(s.median)),
                self.server_cpu(&noop_name).map_or("–".into(), |s| rate(s.median)),
                self.generator_cpu(name).map_or("–".into(), |s| rate(s.median)),
            );
        }
        out += "\nEach round, per route:\n\n| route | estimate | ";
        out += &(1..=self.plan.rounds).map(|r| format!("round {r}")).collect::<Vec<_>>().join(" | ");
        out += " |\n|---|";
        out += &"--:|".repeat(self.plan.rounds + 1);
        out += "\n";
        let mut names: Vec<&str> = self.searches.iter().map(|s| s.variant.as_str()).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let by_round: BTreeMap<usize, String> = self
                .searches
                .iter()
                .filter(|s| s.variant == name)
                .map(|s| (s.round, s.votes_per_s.map_or("–".into(), rate)))
                .collect();
            let cells: Vec<String> =
                (0..=self.plan.rounds).map(|r| by_round.get(&r).cloned().unwrap_or_else(|| "–".into())).collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }

        out += "\n### Latency at 25/50/75/90% of each median capacity (ms, from each request's due time)\n\n";
        out +=
            "| route | load | offered req/s | p50 | p99 | p99.9 | max | errors |\n|---|--:|--:|--:|--:|--:|--:|--:|\n";
        for step in &self.latency {
            let _ = writeln!(
                out,
                "| {} | {:.0}% | {} | {} | {} | {} | {} | {} |",
                step.target,
                step.fraction_of_capacity.unwrap_or(0.0) * 100.0,
                rate(step.offered_per_s),
                ms(step.p50_ms),
                ms(step.p99_ms),
                ms(step.p999_ms),
                ms(step.max_ms),
                step.error_total()
            );
        }

        out += "\n### Peers (per second; median and range)\n\n| peer | runs | rate | how |\n|---|--:|--:|---|\n";
        let mut peer_names: Vec<&str> = self.peers.iter().map(|p| p.peer.as_str()).collect();
        peer_names.sort_unstable();
        peer_names.dedup();
        let bare_consume = Spread::of(self.bare_consume.iter().map(|p| p.per_s));
        let mut rows: Vec<(&str, Spread, &PeerRun)> = Vec::new();
        for name in peer_names {
            let first = self.peers.iter().find(|p| p.peer == name).expect("a run");
            if let Some(spread) = self.peer(name) {
                rows.push((name, spread, first));
            }
        }
        if let (Some(spread), Some(first)) = (bare_consume, self.bare_consume.first()) {
            rows.push(("rdkafka consumer", spread, first));
        }
        for (name, spread, first) in rows {
            let _ = writeln!(out, "| {name} | {} | {} | {} |", spread.count, spread.text(), first.how);
        }

        out += "\n### Consumer catch-up (one replica)\n\n| backlog | counted/s (Redis) | logged/s (MongoDB) | all done in | consumer CPU µs/vote | consumer peak RSS |\n|--:|--:|--:|--:|--:|--:|\n";
        for catch_up in &self.catchups {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} s | {} | {:.0} MiB |",
                catch_up.backlog,
                rate(catch_up.counted_per_s),
                rate(catch_up.logged_per_s),
                catch_up.total_s,
                opt(catch_up.consumer_cpu_us_per_vote),
                catch_up.consumer_memory.peak_rss_mib
            );
        }

        out += "\n### End to end: acceptance → count visible in Redis (`POST /votes`, one consumer)\n\n";
        let _ = writeln!(
            out,
            "Pipeline capacity (last step with achieved ≥ 99%, no errors, every traced vote seen, visible p99 ≤ {} ms): {} votes/s.\n",
            self.plan.e2e_bound.as_millis(),
            self.e2e_capacity.map_or("not found".into(), rate)
        );
        out += "| step | offered/s | accepted/s | ingest p99 | visible p50 | p99 | p99.9 | max | traced | unseen | ingest µs/vote | consumer µs/vote |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
        for step in self.e2e.iter().chain(&self.sustained) {
            e2e_row(&mut out, step);
        }
        if let Some(reckoning) = &self.reckoning {
            let _ = writeln!(
                out,
                "\nReckoning: accepted {} = counted in Redis {}; logged by the consumer {} of {} accepted since it started; {} of {} traced ids found in MongoDB by id: {}.",
                reckoning.accepted,
                reckoning.counted,
                reckoning.logged_since,
                reckoning.accepted_since,
                reckoning.sampled_found,
                reckoning.sampled,
                if reckoning.exact() { "exact" } else { "NOT EXACT" }
            );
        }

        out += "\n### Cross-checks\n\n";
        for noop in [false, true] {
            let name = if noop { "http-vote (no-op)" } else { "http-vote" };
            if let (Some(h2load), Some(own)) = (self.peer(&format!("h2load {name}")), self.capacity(name)) {
                let _ = writeln!(
                    out,
                    "- `h2load` closed loop on {name}: {} requests/s; this generator's capacity: {} ({:.2}×).",
                    h2load.text(),
                    rate(own.median),
                    own.median / h2load.median
                );
            }
        }
        if let Some((locust, cpu)) = &self.locust {
            let own = self.capacity("rust-send-data").or_else(|| self.capacity("http-vote"));
            let _ = writeln!(
                out,
                "- Locust ({}, {}): {} requests/s with its process at {:.0}% of one core{}.",
                locust.peer,
                locust.how,
                rate(locust.per_s),
                cpu * 100.0,
                own.map_or(String::new(), |own| format!(
                    "; the same route's capacity measured here: {} ({:.1}× Locust)",
                    rate(own.median),
                    own.median / locust.per_s
                ))
            );
        }
        let _ = writeln!(
            out,
            "- Memory: ingest {:.0} MiB now, {:.0} MiB peak{}.",
            self.ingest_memory.rss_mib,
            self.ingest_memory.peak_rss_mib,
            self.wasm_memory
                .map_or(String::new(), |m| format!("; the Wasm route's host {:.0} MiB peak", m.peak_rss_mib))
        );
        if !self.not_run.is_empty() {
            out += "\nNot measured:\n\n";
            for line in &self.not_run {
                let _ = writeln!(out, "- {line}");
            }
        }

        out += "\n### Targets\n\n| what | measured | target | |\n|---|---|---|---|\n";
        for (what, measured, target, met) in self.targets() {
            let _ = writeln!(out, "| {what} | {measured} | {target} | {} |", check(met));
        }
        out
    }

    /// The charts, as (file name, SVG).
    pub fn charts(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut charts = Vec::new();
        let groups: Vec<BarGroup> = self
            .plan
            .targets
            .iter()
            .map(|target| {
                let name = target.name();
                let bars = vec![
                    self.capacity(name).map(|s| s.bar()),
                    self.capacity(&format!("{name} (no-op)")).map(|s| s.bar()),
                ];
                BarGroup { label: name.to_owned(), bars }
            })
            .collect();
        charts.push((
            "capacity.svg",
            chart::bar_chart(
                "Ingest capacity per route (median, range over rounds)",
                "votes/s",
                &["with Kafka", "no-op route"],
                &groups,
            )?,
        ));
        let mut by_variant: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for step in &self.latency {
            if let (Some(fraction), Some(p99)) = (step.fraction_of_capacity, step.p99_ms) {
                by_variant.entry(step.target.as_str()).or_default().push((fraction * 100.0, p99));
            }
        }
        let series: Vec<Series> =
            by_variant.into_iter().map(|(name, points)| Series { name: name.to_owned(), points }).collect();
        charts.push((
            "latency.svg",
            chart::line_chart("p99 latency by load", "% of the route's capacity", "p99 (ms)", true, &series)?,
        ));
        let steps: Vec<&EndToEnd> = self.e2e.iter().filter(|s| s.label != "warm-up").collect();
        let mut sorted = steps.clone();
        sorted.sort_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
        let line = |name: &str, pick: fn(&EndToEnd) -> Option<f64>| Series {
            name: name.to_owned(),
            points: sorted.iter().filter_map(|s| pick(s).map(|v| (s.offered_per_s, v))).collect(),
        };
        charts.push((
            "end-to-end.svg",
            chart::line_chart(
                "Acceptance → visible in Redis, by offered rate",
                "offered votes/s",
                "ms",
                true,
                &[
                    line("p50", |s| s.visible_p50_ms),
                    line("p99", |s| s.visible_p99_ms),
                    line("p99.9", |s| s.visible_p999_ms),
                ],
            )?,
        ));
        if let Some(catch_up) = self.catchups.first() {
            let series = [
                Series {
                    name: "counted (Redis)".into(),
                    points: catch_up.timeline.iter().map(|p| (p.0, p.1 as f64)).collect(),
                },
                Series {
                    name: "logged (MongoDB)".into(),
                    points: catch_up.timeline.iter().map(|p| (p.0, p.2 as f64)).collect(),
                },
            ];
            charts.push((
                "catch-up.svg",
                chart::line_chart(
                    &format!("Consumer catch-up on a backlog of {} votes", catch_up.backlog),
                    "seconds",
                    "votes",
                    false,
                    &series,
                )?,
            ));
        }
        Ok(charts)
    }
}

fn e2e_row(out: &mut String, step: &EndToEnd) {
    let _ = writeln!(
        out,
        "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        step.label,
        if step.passed { " ✓" } else { " ✗" },
        rate(step.offered_per_s),
        rate(step.accepted_per_s),
        ms(step.ingest_p99_ms),
        ms(step.visible_p50_ms),
        ms(step.visible_p99_ms),
        ms(step.visible_p999_ms),
        ms(step.visible_max_ms),
        step.traced,
        step.unseen,
        opt(step.ingest_cpu_us_per_vote),
        opt(step.consumer_cpu_us_per_vote),
    );
}

/// Writes `report.md`, `report.json` and the charts into `dir`.
pub fn write(report: &SuiteReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), report.markdown())?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    write_charts(report, dir)
}

/// Draws the charts of the `report.json` at `json` again, into `dir`, measuring nothing.
pub fn redraw(json: &Path, dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
    let report: SuiteReport =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a suite report", json.display()))?;
    std::fs::create_dir_all(dir)?;
    write_charts(&report, dir)
}

fn write_charts(report: &SuiteReport, dir: &Path) -> anyhow::Result<()> {
    for (name, svg) in report.charts()? {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_report_reads_back_and_draws_the_same_charts() {
        let stored: SuiteReport = serde_json::from_str(include_str!("../../docs/bench/full-report.json")).unwrap();
        let again: SuiteReport = serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap();
        let charts = stored.charts().unwrap();
        assert_eq!(charts, again.charts().unwrap());
        let names: Vec<&str> = charts.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["capacity.svg", "latency.svg", "end-to-end.svg", "catch-up.svg"]);
        // Every route of the run is a group of the capacity chart.
        for target in &stored.plan.targets {
            assert!(charts[0].1.contains(&format!("\n{}\n</text>", target.name())), "{}", target.name());
        }
    }
}
