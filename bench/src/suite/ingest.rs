//! Stage 3: every ingest route's capacity and latency, with Kafka and without, next to its peers.

use super::*;

impl Suite<'_> {
    /// One open-loop step of `variant` at `rate` for `length`, with the CPU it cost.
    async fn step(
        &self,
        sender: &Sender,
        variant: Variant,
        rate: f64,
        length: Duration,
        phase: &str,
    ) -> anyhow::Result<Step> {
        tokio::time::sleep(self.plan.pause).await;
        let target = variant.target;
        let schedule = Schedule {
            rate,
            requests: crate::requests_for(rate, length),
            max_outstanding: 10_000,
            timeout: Duration::from_secs(10),
        };
        let server = CpuMeter::start(&self.server_pids(target))?;
        let generator = CpuMeter::start(&[std::process::id()])?;
        let measured = open_loop::run(sender, schedule).await?;
        let votes_per_request = target.votes_per_request(self.plan.batch);
        let mut step = Step::new(target, phase, votes_per_request, &measured);
        step.target = variant.name();
        step.server_cpu_us_per_vote = system::micros_per(server.used()?, measured.ok * votes_per_request as u64);
        step.generator_cpu_us_per_request = system::micros_per(generator.used()?, measured.ok);
        Ok(step)
    }

    async fn search(
        &self,
        variant: Variant,
        stepping: Stepping,
        length: Duration,
        round: usize,
    ) -> anyhow::Result<Search> {
        let sender = Sender::new(variant.target, &self.endpoints(variant.noop, None))?;
        // One request on every connection, so that connecting is not part of the first step.
        for n in 0..8 {
            sender
                .send(n)
                .await
                .map_err(|error| anyhow::anyhow!("{} did not accept a vote: {error}", variant.name()))?;
        }
        let measure = |rate| {
            let sender = &sender;
            async move { self.step(sender, variant, rate, length, "capacity").await.map(Some) }
        };
        let mut found = capacity::search(&stepping, measure).await?;
        if found.capacity.is_none() {
            // One hiccup of a busy machine in the first step should not void the round: the search
            // runs once more; both attempts' steps stay in the report.
            let again = capacity::search(&stepping, measure).await?;
            found = capacity::Search { steps: [found.steps, again.steps].concat(), ..again };
        }
        let last_passed = found.steps.iter().rev().find(|step| step.passed == Some(true));
        let votes = variant.target.votes_per_request(self.plan.batch) as f64;
        let search = Search {
            variant: variant.name(),
            round,
            capacity_per_s: found.capacity,
            votes_per_s: found.capacity.map(|c| c * votes),
            stopped: found.stopped,
            server_cpu_us_per_vote: last_passed.and_then(|step| step.server_cpu_us_per_vote),
            generator_cpu_us_per_request: last_passed.and_then(|step| step.generator_cpu_us_per_request),
            steps: found.steps,
        };
        eprintln!(
            "bench: {} round {round}: {} requests/s",
            search.variant,
            search.capacity_per_s.map_or("none".into(), |c| format!("{c:.0}"))
        );
        Ok(search)
    }

    fn variants(&self) -> Vec<Variant> {
        let mut variants = Vec::new();
        for &target in &self.plan.targets {
            variants.push(Variant { target, noop: false });
            if target != Target::WasmVote {
                variants.push(Variant { target, noop: true });
            }
        }
        variants
    }

    pub(super) async fn ingest(&mut self, report: &mut SuiteReport) -> anyhow::Result<()> {
        let variants = self.variants();
        let first_rate = if self.plan.profile == Profile::Smoke { 800.0 } else { 1000.0 };
        let mut estimates = BTreeMap::new();
        for &variant in &variants {
            let coarse = Stepping {
                start_rate: first_rate,
                factor: 2.0,
                max_rate: 1_000_000.0,
                max_steps: 20,
                p99_bound: self.plan.p99_bound,
                // An estimate for the fine rounds: the first failed step is enough.
                refine: 0,
            };
            let length = self.plan.step.min(Duration::from_secs(1));
            let mut search = self.search(variant, coarse, length, 0).await?;
            if search.capacity_per_s.is_none() {
                // Too fast a start for this route (a batch route, the Wasm front): from far lower.
                let lower = Stepping { start_rate: first_rate / 16.0, ..coarse };
                let again = self.search(variant, lower, length, 0).await?;
                search = Search { steps: [search.steps, again.steps].concat(), ..again };
            }
            estimates.insert(variant, search.capacity_per_s.unwrap_or(first_rate / 16.0));
            report.searches.push(search);
        }
        let peer_topic = "bench-peer";
        create_topic(&self.stack.kafka.url(), peer_topic).await?;
        for round in 1..=self.plan.rounds {
            // Each round starts with a different route, so that no route always follows the same one.
            let mut order = variants.clone();
            let shift = (round - 1) * 2 % order.len().max(1);
            order.rotate_left(shift);
            for variant in order {
                let fine = Stepping {
                    start_rate: (estimates[&variant] * 0.75).max(1.0),
                    factor: self.plan.factor,
                    max_rate: 1_000_000.0,
                    max_steps: 20,
                    p99_bound: self.plan.p99_bound,
                    refine: capacity::REFINE,
                };
                report.searches.push(self.search(variant, fine, self.plan.step, round).await?);
            }
            self.peer_round(round, peer_topic, &estimates, report).await;
        }
        for variant in variants {
            let capacities = report.searches.iter().filter(|s| s.round > 0 && s.variant == variant.name());
            let Some(capacity) = Spread::of(capacities.filter_map(|s| s.capacity_per_s)) else { continue };
            let capacity = capacity.median;
            let sender = Sender::new(variant.target, &self.endpoints(variant.noop, None))?;
            for fraction in crate::LATENCY_FRACTIONS {
                let mut step =
                    self.step(&sender, variant, capacity * fraction, self.plan.latency_step, "latency").await?;
                step.fraction_of_capacity = Some(fraction);
                report.latency.push(step);
            }
        }
        Ok(())
    }

    /// The peers of one ingest round; a peer that cannot run is reported, not fatal.
    async fn peer_round(
        &self,
        round: usize,
        topic: &str,
        estimates: &BTreeMap<Variant, f64>,
        report: &mut SuiteReport,
    ) {
        let kafka = self.stack.kafka.url();
        let records = self.plan.peer_records;
        let out = self.config.out.clone();
        let mut outcomes: Vec<anyhow::Result<Vec<PeerRun>>> = vec![
            peers::kafka_produce(&kafka, topic, &format!("peer{round}"), records).await.map(|run| vec![run]),
            peers::kcat(&kafka, topic, &format!("kcat{round}"), records, &out).await.map(|run| vec![run]),
            peers::redis_benchmark("127.0.0.1", self.stack.redis.port(), self.plan.redis_requests).await,
        ];
        for noop in [false, true] {
            let variant = Variant { target: Target::HttpVote, noop };
            if let Some(&estimate) = estimates.get(&variant) {
                let requests = ((estimate * 3.0) as u64).clamp(1000, 300_000);
                let (name, album, year, rank) = bandvote_testkit::vote(0);
                let vote = serde_json::json!({"name": name, "album": album, "year": year, "rank": rank});
                let body = serde_json::to_vec(&vote).expect("JSON");
                let url = format!("{}/votes", self.stack.http_url);
                let run = peers::h2load(&url, &body, requests, 64, noop, &out).await.map(|mut run| {
                    run.peer = format!("h2load {}", variant.name());
                    vec![run]
                });
                outcomes.push(run);
            }
        }
        for outcome in outcomes {
            match outcome {
                Ok(runs) => report.peers.extend(runs),
                Err(error) => {
                    let line = format!("{error:#}");
                    if !report.not_run.contains(&line) {
                        report.not_run.push(line);
                    }
                }
            }
        }
    }
}

/// Creates a topic with the votes topic's partitions (and its dead-letter topic).
async fn create_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let kafka = bandvote_ops::config::KafkaArgs {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        partitions: 6,
        replication_factor: 1,
        create_topics: true,
        security: Default::default(),
    };
    Ok(bandvote_ops::topics::ensure(&kafka).await?)
}
