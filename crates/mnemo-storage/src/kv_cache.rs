//! An in-memory cache of key-value memory: the record (value, content type, version) of
//! recently written or read keys, so that a read of a hot key does not walk the LSM tree.
//!
//! It is a [`WriteThrough`] cache keyed by (tenant, key) and follows its consistency rules:
//! every write of a key calls [`KvCache::begin`] under the key's lock, right before its batch
//! goes to the engine, and finishes with the [`KvChange`] it made once durable; a hit needs no
//! write of the key in flight; fills after a miss are discarded if a write intervened or a
//! failed write has not been settled.
//!
//! A value written with a TTL is not cached by its write: the engine computes its expiry from
//! its own clock, so the entry is filled by the next read, which returns the expiry the store
//! holds. A cached entry past its expiry answers "not found", as the store does.

use crate::clock::now_ms;
use crate::records::KvRecord;
use crate::write_through::{self, Change, Entry, Miss, Write, WriteThrough};

/// Bytes counted for an entry besides its key and value.
const ENTRY_OVERHEAD: usize = 160;

/// A cached value.
#[derive(Clone, Debug)]
pub(crate) struct CachedKv {
    /// The stored record.
    pub record: KvRecord,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: Option<i64>,
    bytes: usize,
}

impl CachedKv {
    /// A cached value of `key` (counted in the budget).
    pub fn new(key: &str, record: KvRecord, expires_at_ms: Option<i64>) -> CachedKv {
        let bytes = ENTRY_OVERHEAD + key.len() + record.value.len() + record.content_type.len();
        CachedKv {
            record,
            expires_at_ms,
            bytes,
        }
    }

    /// False once past its expiry.
    pub fn live(&self) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms())
    }
}

impl Entry for CachedKv {
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What a finished write did to a key.
#[derive(Debug)]
pub(crate) enum KvChange {
    /// The key now holds this value, without expiry.
    Put(CachedKv),
    /// The key was deleted, or written with an expiry (not cached, see the module
    /// documentation).
    Dropped,
}

impl Change<CachedKv> for KvChange {
    fn apply(self, entry: &mut Option<CachedKv>) {
        *entry = match self {
            KvChange::Put(v) => Some(v),
            KvChange::Dropped => None,
        };
    }
}

/// A write registered with [`KvCache::begin`].
pub(crate) type KvWrite<'a> = Write<'a, CachedKv, KvChange>;

/// The cache (see the module documentation).
pub(crate) struct KvCache(WriteThrough<CachedKv, KvChange>);

impl KvCache {
    /// A cache of at most about `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> KvCache {
        KvCache(WriteThrough::new(budget_bytes))
    }

    /// The key's value if cached and quiescent (possibly expired: check [`CachedKv::live`]).
    pub fn get(&self, tenant: &str, key: &str) -> Result<CachedKv, Miss> {
        self.0
            .read(&write_through::key(tenant, key), |v| Some(v.clone()))
    }

    /// Fills the cache after a miss with what was read from the store.
    pub fn fill(&self, miss: Miss, tenant: &str, key: &str, value: CachedKv) {
        self.0
            .fill(miss, write_through::key(tenant, key), value, |_| true);
    }

    /// Registers a write of a key about to be handed to the engine. Call under the key's
    /// lock.
    pub fn begin(&self, tenant: &str, key: &str) -> KvWrite<'_> {
        self.0.begin(write_through::key(tenant, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn value(v: &str, expires_at_ms: Option<i64>) -> CachedKv {
        let record = KvRecord {
            expires_at_ms: None,
            version: 1,
            updated_at_ms: 0,
            content_type: "application/json".into(),
            value: Bytes::from(v.to_string()),
        };
        CachedKv::new("k", record, expires_at_ms)
    }

    fn got(c: &KvCache, key: &str) -> Option<Bytes> {
        c.get("t", key).ok().map(|v| v.record.value)
    }

    #[test]
    fn writes_apply_in_order_and_reads_wait_for_them() {
        let c = KvCache::new(1 << 20);
        c.begin("t", "k").finish(KvChange::Put(value("1", None)));
        assert_eq!(got(&c, "k").as_deref(), Some(&b"1"[..]));
        let a = c.begin("t", "k");
        let b = c.begin("t", "k");
        assert_eq!(got(&c, "k"), None, "writes in flight");
        b.finish(KvChange::Put(value("3", None)));
        assert_eq!(got(&c, "k"), None, "a is still in flight");
        a.finish(KvChange::Put(value("2", None)));
        assert_eq!(
            got(&c, "k").as_deref(),
            Some(&b"3"[..]),
            "the later write wins"
        );
        c.begin("t", "k").finish(KvChange::Dropped);
        assert_eq!(got(&c, "k"), None);
    }

    #[test]
    fn a_failed_write_drops_the_value_and_refuses_fills_until_settled() {
        let c = KvCache::new(1 << 20);
        c.begin("t", "k").finish(KvChange::Put(value("1", None)));
        drop(c.begin("t", "k"));
        assert_eq!(got(&c, "k"), None);
        let miss = c.get("t", "k").err().unwrap();
        c.fill(miss, "t", "k", value("1", None));
        assert_eq!(got(&c, "k"), None, "unsettled: fill refused");
        c.begin("t", "other").finish(KvChange::Dropped);
        let miss = c.get("t", "k").err().unwrap();
        c.fill(miss, "t", "k", value("2", None));
        assert_eq!(got(&c, "k").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn fills_during_a_write_are_ignored_and_expiry_is_reported() {
        let c = KvCache::new(1 << 20);
        let miss = c.get("t", "k").err().unwrap();
        let w = c.begin("t", "k");
        c.fill(miss, "t", "k", value("old", None));
        w.finish(KvChange::Dropped);
        assert_eq!(
            got(&c, "k"),
            None,
            "the fill read a state the write replaced"
        );
        let miss = c.get("t", "k").err().unwrap();
        c.fill(miss, "t", "k", value("x", Some(now_ms() - 1)));
        assert!(!c.get("t", "k").ok().unwrap().live());
    }

    #[test]
    fn values_are_evicted_over_budget() {
        let c = KvCache::new(64 * 1024);
        for i in 0..1000 {
            c.begin("t", &format!("k{i}"))
                .finish(KvChange::Put(value(&"v".repeat(200), None)));
        }
        let cached = (0..1000)
            .filter(|i| got(&c, &format!("k{i}")).is_some())
            .count();
        assert!(cached > 0 && cached < 1000, "{cached} cached");
    }
}
