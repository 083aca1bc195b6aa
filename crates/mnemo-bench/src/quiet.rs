//! Waiting for the machine to go quiet between the load and the first workload.
//!
//! After a bulk load every system has background work left: PostgreSQL checkpoints, Redis
//! AOF writes, mnemo memtable flushes, compaction and search-index merges, and the kernel
//! writes back dirty pages. Measuring while that runs charges one system for another's
//! leftovers on a machine with few cores, so the harness rests at least a minimum time and
//! then until the whole machine's CPU is nearly idle.

use std::time::{Duration, Instant};

/// Busy and total jiffies of all CPUs (first line of `/proc/stat`).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        // user nice system idle iowait irq softirq steal; guest time is already in user/nice.
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Fraction of all CPUs busy over `window`, if `/proc/stat` is readable.
async fn busy_over(window: Duration) -> Option<f64> {
    let (b0, t0) = cpu_times()?;
    tokio::time::sleep(window).await;
    let (b1, t1) = cpu_times()?;
    let total = t1.saturating_sub(t0);
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// How the rest after the load ended.
#[derive(Clone, Copy, Debug)]
pub struct Rested {
    /// Time spent resting.
    pub waited: Duration,
    /// Whether the machine went quiet before `max`.
    pub quiet: bool,
}

/// Rests at least `min`, then until the machine's CPU is at most `threshold` busy over a
/// 2-second window, giving up after `max` in all.
pub async fn rest(min: Duration, max: Duration, threshold: f64) -> Rested {
    let started = Instant::now();
    tokio::time::sleep(min).await;
    loop {
        match busy_over(Duration::from_secs(2)).await {
            Some(busy) if busy <= threshold => {
                return Rested {
                    waited: started.elapsed(),
                    quiet: true,
                }
            }
            None => {
                return Rested {
                    waited: started.elapsed(),
                    quiet: false,
                }
            }
            Some(_) if started.elapsed() >= max => {
                return Rested {
                    waited: started.elapsed(),
                    quiet: false,
                }
            }
            Some(_) => {}
        }
    }
}
