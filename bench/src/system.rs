//! What a process costs: CPU time and memory, read from `/proc` (Linux).

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time (user + system) `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading process {pid}"))?;
    // The command name, in parentheses, may hold spaces: the fields are counted after its end.
    let fields: Vec<&str> = stat.rsplit_once(')').context("a stat line")?.1.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of the whole line are the 12th and 13th after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("CPU ticks in the stat line");
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 1000 / TICKS_PER_SECOND))
}

/// Resident memory of `pid`: now and its peak, in MiB.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading process {pid}"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .with_context(|| format!("{name} in the status of process {pid}"))
    };
    Ok(Memory { rss_mib: kib("VmRSS:")? / 1024.0, peak_rss_mib: kib("VmHWM:")? / 1024.0 })
}

/// CPU time used by a set of processes since the meter started.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Duration,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(CpuMeter { pids: pids.to_vec(), start: total(pids)? })
    }

    pub fn used(&self) -> anyhow::Result<Duration> {
        Ok(total(&self.pids)?.saturating_sub(self.start))
    }
}

fn total(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|&pid| cpu_time(pid)).sum()
}

/// Microseconds of CPU per item (vote), or `None` without items.
pub fn micros_per(cpu: Duration, items: u64) -> Option<f64> {
    (items > 0).then(|| cpu.as_secs_f64() * 1e6 / items as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        // Burn about 50 ms of CPU.
        let until = std::time::Instant::now() + Duration::from_millis(50);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = cpu_time(pid).unwrap() - before;
        assert!(used >= Duration::from_millis(30), "{used:?}");
        let memory = memory(pid).unwrap();
        assert!(memory.rss_mib > 1.0 && memory.peak_rss_mib >= memory.rss_mib, "{memory:?}");
        assert!(cpu_time(u32::MAX).is_err());
        assert_eq!(micros_per(Duration::from_millis(3), 1000), Some(3.0));
        assert_eq!(micros_per(Duration::from_millis(3), 0), None);
    }
}
