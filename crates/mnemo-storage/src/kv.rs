//! Key-value memory: values up to 64 KiB with ETags, conditional writes, TTL, prefix listing
//! and atomic multi-key writes.
//!
//! A conditional write reads the newest value (including writes still in flight), checks the
//! condition and writes, all under the key's lock; compare-and-set is therefore linearizable
//! (the linearization point is the write's position in the write-ahead log).

use crate::changelog::{now_ms, ChangeEntry};
use crate::engine::{prefix_range, KeyRange, KeyValue};
use crate::ids::Scope;
use crate::kv_cache::{CachedKv, KvChange};
use crate::records::KvRecord;
use crate::{keys, Result, Store, StoreError};
use bytes::Bytes;
use rand::RngCore;
use slatedb::config::{PutOptions, Ttl};
use slatedb::WriteBatch;
use std::ops::Bound;
use std::time::Duration;

/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest TTL accepted (ten years).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Most operations in one atomic batch.
pub const MAX_BATCH_OPS: usize = 100;

/// Conditions on a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// `If-Match`: the current value must have one of these ETags (`*`: must exist).
    pub if_match: Option<Vec<String>>,
    /// `If-None-Match: *`: the key must not exist.
    pub if_none_match_any: bool,
}

impl Condition {
    fn check(&self, current: Option<&KvRecord>) -> std::result::Result<(), String> {
        if self.if_none_match_any && current.is_some() {
            return Err("If-None-Match: * but the key exists".into());
        }
        if let Some(tags) = &self.if_match {
            let Some(cur) = current else {
                return Err("If-Match given but the key does not exist".into());
            };
            let etag = cur.etag();
            // Strong comparison (RFC 9110 §13.1.1): a weak tag never matches.
            let hit = tags.iter().any(|t| {
                let t = t.trim();
                t == "*" || t == etag
            });
            if !hit {
                return Err(format!("If-Match does not match the current ETag {etag}"));
            }
        }
        Ok(())
    }
}

/// One operation of an atomic multi-key write.
#[derive(Clone, Debug)]
pub enum KvOp {
    /// Store a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// Media type.
        content_type: String,
        /// Expiry.
        ttl: Option<Duration>,
        /// Condition.
        condition: Condition,
    },
    /// Remove a key (absent keys are fine unless a condition says otherwise).
    Delete {
        /// The key.
        key: String,
        /// Condition.
        condition: Condition,
    },
}

impl KvOp {
    fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key, .. } => key,
        }
    }
    fn condition(&self) -> &Condition {
        match self {
            KvOp::Put { condition, .. } | KvOp::Delete { condition, .. } => condition,
        }
    }
}

/// Outcome of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// New ETag (puts), `None` for deletes.
    pub etag: Option<String>,
    /// Size of the stored value (0 for deletes).
    pub size: usize,
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// Stored record (value, content type, version).
    pub record: KvRecord,
    /// Expiry time, milliseconds since the Unix epoch, if any.
    pub expires_at_ms: Option<i64>,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct KvPage {
    /// Entries in key order.
    pub entries: Vec<KvEntry>,
    /// Whether more keys follow.
    pub has_more: bool,
}

/// Validates a key: 1–1024 bytes.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::Invalid(format!(
            "key must be 1-{MAX_KEY_BYTES} bytes of UTF-8"
        )));
    }
    Ok(())
}

fn decode_entry(scope: &Scope, kv: KeyValue) -> Result<KvEntry> {
    let prefix_len = keys::space(&scope.tenant, keys::Space::Kv).len();
    let key = std::str::from_utf8(&kv.key[prefix_len..])
        .map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))?
        .to_string();
    Ok(KvEntry {
        key,
        record: KvRecord::decode(kv.value)?,
        expires_at_ms: kv.expire_ts,
    })
}

fn new_version() -> u64 {
    rand::rng().next_u64()
}

impl Store {
    /// Reads a key (durable data only; expired keys are absent). Recently written or read
    /// keys are answered from the store's cache of values.
    pub async fn kv_get(&self, scope: &Scope, key: &str) -> Result<KvEntry> {
        check_key(key)?;
        let not_found = || StoreError::NotFound("key".into());
        let t = scope.tenant.as_str();
        // Only an open engine answers reads; otherwise it reports why not.
        let miss = if self.engine.is_ready() {
            match self.kv_cache.get(t, key) {
                Ok(v) if v.live() => {
                    return Ok(KvEntry {
                        key: key.to_string(),
                        record: v.record,
                        expires_at_ms: v.expires_at_ms,
                    })
                }
                Ok(_) => return Err(not_found()),
                Err(miss) => Some(miss),
            }
        } else {
            None
        };
        let kv = self
            .engine
            .get_entry(&keys::kv(&scope.tenant, key))
            .await?
            .ok_or_else(not_found)?;
        let entry = decode_entry(scope, kv)?;
        if let Some(miss) = miss {
            let cached = CachedKv::new(key, entry.record.clone(), entry.expires_at_ms);
            self.kv_cache.fill(miss, t, key, cached);
        }
        Ok(entry)
    }

    /// Writes one key, under a condition.
    pub async fn kv_put(
        &self,
        scope: &Scope,
        key: &str,
        value: Bytes,
        content_type: String,
        ttl: Option<Duration>,
        condition: Condition,
    ) -> Result<KvWritten> {
        let mut out = self
            .kv_batch(
                scope,
                vec![KvOp::Put {
                    key: key.to_string(),
                    value,
                    content_type,
                    ttl,
                    condition,
                }],
            )
            .await
            .map_err(|e| match e {
                StoreError::PreconditionFailed { message, .. } => StoreError::PreconditionFailed {
                    message,
                    index: None,
                },
                e => e,
            })?;
        out.pop()
            .ok_or_else(|| StoreError::Internal("empty batch result".into()))
    }

    /// Deletes one key; `NotFound` if it does not exist.
    pub async fn kv_delete(&self, scope: &Scope, key: &str, condition: Condition) -> Result<()> {
        check_key(key)?;
        let k = keys::kv(&scope.tenant, key);
        let (pending, cached) = {
            let _g = self.kv_locks.lock(&k).await;
            let current = self.engine.get_latest(&k).await?;
            let Some(cur) = current else {
                return Err(StoreError::NotFound("key".into()));
            };
            let cur = KvRecord::decode(cur.value)?;
            condition
                .check(Some(&cur))
                .map_err(|message| StoreError::PreconditionFailed {
                    message,
                    index: None,
                })?;
            let mut batch = WriteBatch::new();
            batch.delete(&k);
            let mut e = ChangeEntry::new("kv.deleted");
            e.key = Some(key.to_string());
            let cached = self.kv_cache.begin(scope.tenant.as_str(), key);
            let pending = self
                .log
                .write(&self.engine, &scope.tenant, batch, vec![e])
                .await?;
            (pending, cached)
        };
        pending.durable().await?;
        cached.finish(KvChange::Dropped);
        Ok(())
    }

    /// Applies operations atomically: every condition holds and all are written in one batch,
    /// or nothing is written.
    pub async fn kv_batch(&self, scope: &Scope, ops: Vec<KvOp>) -> Result<Vec<KvWritten>> {
        if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
            return Err(StoreError::Invalid(format!(
                "a batch has 1-{MAX_BATCH_OPS} operations"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for op in &ops {
            check_key(op.key())?;
            if !seen.insert(op.key()) {
                return Err(StoreError::Invalid(format!(
                    "key {:?} appears twice in the batch",
                    op.key()
                )));
            }
            if let KvOp::Put { value, ttl, .. } = op {
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::Invalid(format!(
                        "value of {:?} exceeds {MAX_VALUE_BYTES} bytes",
                        op.key()
                    )));
                }
                if ttl.is_some_and(|t| t.is_zero() || t > MAX_TTL) {
                    return Err(StoreError::Invalid("ttl must be 1s to 10 years".into()));
                }
            }
        }
        let t = &scope.tenant;
        let storage_keys: Vec<Vec<u8>> = ops.iter().map(|op| keys::kv(t, op.key())).collect();
        let (written, pending, cached) = {
            let _g = self.kv_locks.lock_many(&storage_keys).await;
            for (i, (op, k)) in ops.iter().zip(&storage_keys).enumerate() {
                let cond = op.condition();
                if *cond == Condition::default() {
                    continue;
                }
                let current = match self.engine.get_latest(k).await? {
                    Some(kv) => Some(KvRecord::decode(kv.value)?),
                    None => None,
                };
                cond.check(current.as_ref())
                    .map_err(|message| StoreError::PreconditionFailed {
                        message,
                        index: Some(i),
                    })?;
            }
            let mut batch = WriteBatch::new();
            let mut entries = Vec::with_capacity(ops.len());
            let mut written = Vec::with_capacity(ops.len());
            let mut changes = Vec::with_capacity(ops.len());
            let now = now_ms();
            for (op, k) in ops.into_iter().zip(storage_keys) {
                match op {
                    KvOp::Put {
                        key,
                        value,
                        content_type,
                        ttl,
                        ..
                    } => {
                        let rec = KvRecord {
                            version: new_version(),
                            updated_at_ms: now,
                            content_type,
                            value,
                        };
                        changes.push(match ttl {
                            None => KvChange::Put(CachedKv::new(&key, rec.clone(), None)),
                            Some(_) => KvChange::Dropped,
                        });
                        let opts = PutOptions {
                            ttl: match ttl {
                                Some(d) => Ttl::ExpireAfterMillis(d.as_millis() as u64),
                                None => Ttl::NoExpiry,
                            },
                        };
                        batch.put_with_options(k, rec.encode(), &opts);
                        let mut e = ChangeEntry::new("kv.put");
                        e.key = Some(key.clone());
                        e.json_object = Some(rec.value.trim_ascii_start().first() == Some(&b'{'));
                        entries.push(e);
                        written.push(KvWritten {
                            key,
                            etag: Some(rec.etag()),
                            size: rec.value.len(),
                        });
                    }
                    KvOp::Delete { key, .. } => {
                        batch.delete(k);
                        let mut e = ChangeEntry::new("kv.deleted");
                        e.key = Some(key.clone());
                        entries.push(e);
                        changes.push(KvChange::Dropped);
                        written.push(KvWritten {
                            key,
                            etag: None,
                            size: 0,
                        });
                    }
                }
            }
            let cache_writes: Vec<_> = written
                .iter()
                .map(|w| self.kv_cache.begin(t.as_str(), &w.key))
                .collect();
            let pending = self.log.write(&self.engine, t, batch, entries).await?;
            (written, pending, cache_writes.into_iter().zip(changes))
        };
        pending.durable().await?;
        for (write, change) in cached {
            write.finish(change);
        }
        Ok(written)
    }

    /// Lists the keys between two bounds on the key bytes (not the tenant prefix), in byte
    /// order: the building block of listings that skip parts of the key space.
    pub async fn kv_scan(
        &self,
        scope: &Scope,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        limit: usize,
    ) -> Result<KvPage> {
        let full = |b: &[u8]| {
            let mut k = keys::kv(&scope.tenant, "");
            k.extend_from_slice(b);
            k
        };
        let space = keys::kv(&scope.tenant, "");
        let start = match lower {
            Bound::Included(b) => Bound::Included(full(b)),
            Bound::Excluded(b) => Bound::Excluded(full(b)),
            Bound::Unbounded => Bound::Included(space.clone()),
        };
        let end = match upper {
            Bound::Included(b) => Bound::Included(full(b)),
            Bound::Excluded(b) => Bound::Excluded(full(b)),
            Bound::Unbounded => prefix_range(space).1,
        };
        self.kv_page(scope, (start, end), limit).await
    }

    /// Lists keys starting with `prefix`, after `after` (exclusive), in byte order.
    pub async fn kv_list(
        &self,
        scope: &Scope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage> {
        let (start, end) = prefix_range(keys::kv(&scope.tenant, prefix));
        let start = match after {
            Some(a) if a.as_bytes() >= prefix.as_bytes() => {
                Bound::Excluded(keys::kv(&scope.tenant, a))
            }
            _ => start,
        };
        self.kv_page(scope, (start, end), limit).await
    }

    /// One page of a key range: at most `limit` entries, and whether more follow.
    async fn kv_page(&self, scope: &Scope, range: KeyRange, limit: usize) -> Result<KvPage> {
        let mut rows = self.engine.scan(range, false, limit + 1).await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let entries = rows
            .into_iter()
            .map(|kv| decode_entry(scope, kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvPage { entries, has_more })
    }
}
