//! Striped async locks that serialise read-check-write sequences on one key.
//!
//! A conditional write reads the current value, checks its condition and writes, all under
//! the lock of its key; the lock is released once the write is in the engine's memtable,
//! before it is durable. That is safe because the write-ahead log is durable in order: a
//! later write that depended on an earlier one can never become durable without it.

use std::hash::{BuildHasher, Hash};
use tokio::sync::{Mutex, MutexGuard};

/// A fixed array of mutexes indexed by key hash.
pub struct StripedLocks {
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl StripedLocks {
    /// Creates `n` stripes (rounded up to at least 1).
    pub fn new(n: usize) -> Self {
        StripedLocks {
            stripes: (0..n.max(1)).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    fn index<K: Hash + ?Sized>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) % self.stripes.len() as u64) as usize
    }

    /// Locks the stripe of one key.
    pub async fn lock<K: Hash + ?Sized>(&self, key: &K) -> MutexGuard<'_, ()> {
        self.stripes[self.index(key)].lock().await
    }

    /// Locks the stripes of several keys, in stripe order so that two callers can never
    /// deadlock, each stripe once.
    pub async fn lock_many<K: Hash>(&self, keys: &[K]) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = keys.iter().map(|k| self.index(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }
}
