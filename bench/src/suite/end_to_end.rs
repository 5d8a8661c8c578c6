//! Stage 2: the pipeline end to end, from acceptance to the count visible in Redis, then sustained.

use super::*;

/// Traced votes per second in an end-to-end step (every n-th vote, whatever the rate).
const TRACED_PER_S: f64 = 250.0;
/// Share of the end-to-end capacity (found with short steps) that the sustained run offers: at
/// 90% a one-minute run fell behind on two cores, the log store being the slowest stage.
const SUSTAINED_SHARE: f64 = 0.7;
/// Traced ids looked up in MongoDB at the end (one find by `_id` each).
const SAMPLED_IDS: usize = 8;

impl Suite<'_> {
    /// One end-to-end step: traced `POST /votes` at `rate` for `length`, the consumer running.
    async fn e2e_step(
        &mut self,
        rate: f64,
        length: Duration,
        label: &str,
        samples: &mut Vec<String>,
    ) -> anyhow::Result<EndToEnd> {
        tokio::time::sleep(self.plan.pause).await;
        let (accepted, watched) = tokio::sync::mpsc::unbounded_channel();
        let run = format!("e2e-{}-{}", label.replace(['%', ' '], ""), self.accepted);
        let every = (rate / TRACED_PER_S).ceil().max(1.0) as u64;
        let sender = Sender::new(Target::HttpVote, &self.endpoints(false, Some(Trace { run, every, accepted })))?;
        let mut redis = self.redis.clone();
        let counted = e2e::Counted {
            keys: self.stack.keys(),
            topic: Stack::TOPIC.to_owned(),
            partitions: Stack::PARTITIONS,
            window: bandvote_domain::ResendWindow::new(Stack::RESEND_WINDOW_MS),
        };
        let watcher = tokio::spawn(async move { e2e::watch(&mut redis, &counted, watched).await });
        let ingest = CpuMeter::start(&[self.stack.ingest_pid()])?;
        let consumer = CpuMeter::start(&self.stack.consumer_pids())?;
        let schedule = Schedule {
            rate,
            requests: crate::requests_for(rate, length),
            max_outstanding: 10_000,
            timeout: Duration::from_secs(10),
        };
        let measured = open_loop::run(&sender, schedule).await?;
        drop(sender);
        let ingest_cpu = ingest.used()?;
        let visible = watcher.await??;
        let consumer_cpu = consumer.used()?;
        self.accepted += measured.ok;
        let room = SAMPLED_IDS.saturating_sub(samples.len()).min(1);
        samples.extend(visible.samples.iter().take(room).cloned());
        let errors = measured.errors.values().sum();
        let step = EndToEnd {
            label: label.to_owned(),
            offered_per_s: rate,
            accepted_per_s: measured.achieved(),
            ok: measured.ok,
            errors,
            ingest_p99_ms: (!measured.latency.is_empty())
                .then(|| measured.latency.value_at_quantile(0.99) as f64 / 1000.0),
            visible_p50_ms: visible.percentile_ms(0.5),
            visible_p99_ms: visible.percentile_ms(0.99),
            visible_p999_ms: visible.percentile_ms(0.999),
            visible_max_ms: (!visible.latency.is_empty()).then(|| visible.latency.max() as f64 / 1000.0),
            traced: visible.latency.len() + visible.unseen,
            unseen: visible.unseen,
            passed: measured.achieved() >= capacity::ACHIEVED_SHARE * rate
                && errors == 0
                && visible.unseen == 0
                && visible.percentile_ms(0.99).is_some_and(|p99| p99 <= self.plan.e2e_bound.as_secs_f64() * 1000.0),
            ingest_cpu_us_per_vote: system::micros_per(ingest_cpu, measured.ok),
            consumer_cpu_us_per_vote: system::micros_per(consumer_cpu, measured.ok),
        };
        eprintln!(
            "bench: end to end {label} at {rate:.0}/s: visible p99 {} ms, {}",
            step.visible_p99_ms.map_or("–".into(), |v| format!("{v:.1}")),
            if step.passed { "passed" } else { "failed" }
        );
        Ok(step)
    }

    pub(super) async fn end_to_end(&mut self, report: &mut SuiteReport) -> anyhow::Result<()> {
        eprintln!("bench: end to end: one consumer replica, traced votes");
        let accepted_before = self.accepted;
        self.stack.spawn_consumer(0)?;
        let mut samples = Vec::new();
        // The consumer joins its group and catches up on nothing; a short run at a low rate waits for it.
        let warm = self.e2e_step(50.0, Duration::from_secs(1), "warm-up", &mut samples).await?;
        ensure!(warm.ok > 0 && warm.unseen == 0, "the pipeline does not count votes: {warm:?}");

        let mut rate = self.plan.e2e_start;
        let mut capacity = None;
        for _ in 0..self.plan.e2e_max_steps {
            let step = self.e2e_step(rate, self.plan.e2e_step, "search", &mut samples).await?;
            let passed = step.passed;
            report.e2e.push(step);
            if !passed {
                break;
            }
            capacity = Some(rate);
            rate = (rate * 1.4).round();
        }
        report.e2e_capacity = capacity;
        let capacity = capacity
            .with_context(|| format!("the pipeline did not hold the first end-to-end step: {:?}", report.e2e.last()))?;
        for fraction in [0.25, 0.5, 0.75] {
            let label = format!("{:.0}%", fraction * 100.0);
            let step = self.e2e_step(capacity * fraction, self.plan.e2e_step, &label, &mut samples).await?;
            report.e2e.push(step);
        }
        eprintln!("bench: sustained run, {:.0} s", self.plan.sustain.as_secs_f64());
        let sustained = self.e2e_step(capacity * SUSTAINED_SHARE, self.plan.sustain, "sustained", &mut samples).await?;
        report.sustained = Some(sustained);

        // Everything accepted must be counted once and logged once.
        let accepted_since = self.accepted - accepted_before;
        // Waits until everything is counted and logged, for 300 s at most: the counts are read again
        // below whether or not they got there, and the reckoning judges them. Redis failing to
        // answer ends the wait (as `Ok(Err(_))`) and the run.
        let settled = poll_until(Duration::from_millis(500), Duration::from_secs(300), || async {
            let counted = match self.counted().await {
                Ok(counted) => counted,
                Err(error) => return Ok(Err(error)),
            };
            let logged = self.logged().await;
            if counted >= self.accepted && logged >= accepted_since { Ok(Ok(())) } else { Err(()) }
        })
        .await;
        if let Ok(Err(error)) = settled {
            return Err(error);
        }
        // A moment more, so that a vote counted twice would show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counted = self.counted().await?;
        let logged = self.logged().await;
        let looked_up = Instant::now();
        let sampled_found =
            self.stack.logged_of(&samples, Duration::from_secs(300)).await.map_err(anyhow::Error::msg)? as u64;
        eprintln!(
            "bench: {} traced ids looked up in MongoDB in {:.1} s",
            samples.len(),
            looked_up.elapsed().as_secs_f64()
        );
        report.reckoning = Some(Reckoning {
            accepted: self.accepted,
            counted,
            logged_since: logged,
            accepted_since,
            sampled: samples.len() as u64,
            sampled_found,
        });
        Ok(())
    }
}
