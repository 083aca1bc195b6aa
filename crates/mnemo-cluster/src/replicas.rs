//! The shards a reader node follows read-only, and how stale each may be.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A shard followed read-only: when its replica last looked for new state.
pub trait Followed: Send + Sync {
    /// The shard's number.
    fn shard(&self) -> u32;
    /// When the last follow round ended (ms since the Unix epoch); `None` before the first.
    fn followed_at_ms(&self) -> Option<u64>;
}

/// The replicas of a reader node, by shard, with their lag bounds.
pub struct Replicas<S> {
    shards: RwLock<HashMap<u32, Arc<S>>>,
    follow: Duration,
}

impl<S: Followed> Replicas<S> {
    /// An empty set; `follow` is how often each replica looks for new state.
    pub fn new(follow: Duration) -> Arc<Self> {
        Arc::new(Replicas {
            shards: RwLock::new(HashMap::new()),
            follow,
        })
    }

    /// Adds a shard opened read-only (and followed).
    pub fn insert(&self, shard: Arc<S>) {
        let mut m = self.shards.write().unwrap_or_else(|e| e.into_inner());
        m.insert(shard.shard(), shard);
    }

    /// The replica of shard `n`, once it is open.
    pub fn get(&self, n: u32) -> Option<Arc<S>> {
        let m = self.shards.read().unwrap_or_else(|e| e.into_inner());
        m.get(&n).cloned()
    }

    /// How stale shard `n`'s replica may be, in ms at `now_ms`: the age of its last follow
    /// round plus the follow interval. `None` before its first round.
    pub fn lag_ms(&self, n: u32, now_ms: u64) -> Option<u64> {
        let followed = self.get(n)?.followed_at_ms()?;
        Some(now_ms.saturating_sub(followed) + self.follow.as_millis() as u64)
    }

    /// The largest lag bound over shards `0..shards`; `None` until every one is followed.
    pub fn max_lag_ms(&self, shards: u32, now_ms: u64) -> Option<u64> {
        (0..shards)
            .map(|n| self.lag_ms(n, now_ms))
            .try_fold(0u64, |m, l| Some(m.max(l?)))
    }

    /// Each followed shard's number and lag bound, by shard.
    pub fn lags(&self, now_ms: u64) -> Vec<(u32, Option<u64>)> {
        let mut ns: Vec<u32> = {
            let m = self.shards.read().unwrap_or_else(|e| e.into_inner());
            m.keys().copied().collect()
        };
        ns.sort_unstable();
        ns.into_iter()
            .map(|n| (n, self.lag_ms(n, now_ms)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(u32, Option<u64>);
    impl Followed for R {
        fn shard(&self) -> u32 {
            self.0
        }
        fn followed_at_ms(&self) -> Option<u64> {
            self.1
        }
    }

    #[test]
    fn lag_is_age_plus_interval_and_known_only_when_all_follow() {
        let r = Replicas::new(Duration::from_millis(100));
        r.insert(Arc::new(R(0, Some(1_000))));
        assert_eq!(r.lag_ms(0, 1_250), Some(350));
        assert_eq!(r.max_lag_ms(2, 1_250), None);
        r.insert(Arc::new(R(1, None)));
        assert_eq!(r.max_lag_ms(2, 1_250), None);
        r.insert(Arc::new(R(1, Some(1_200))));
        assert_eq!(r.max_lag_ms(2, 1_250), Some(350));
        assert_eq!(r.lags(1_250), vec![(0, Some(350)), (1, Some(150))]);
    }
}
