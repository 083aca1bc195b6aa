//! Key-value memory: values up to 64 KiB with ETags, conditional writes, TTL, prefix listing
//! and atomic multi-key writes.
//!
//! A conditional write reads the newest value (including writes still in flight), checks the
//! condition and writes, all under the key's lock; compare-and-set is therefore linearizable
//! (the linearization point is the write's position in the write-ahead log).

use crate::access::{kv_owner, user_space, USER_SPACE_PREFIX};
use crate::changelog::{ChangeEntry, ChangeOp};
use crate::clock::now_ms;
use crate::engine::{prefix_range, KeyRange, KeyValue};
use crate::expiry::EXPIRY_GRACE;
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

/// Decodes a stored memory entry; `None` once its own expiry time has passed (the expiry
/// sweep removes it soon after, see [`crate::expiry`]).
pub(crate) fn decode_entry(scope: &Scope, kv: KeyValue) -> Result<Option<KvEntry>> {
    let key = keys::parse_kv(&scope.tenant, &kv.key)
        .ok_or_else(|| StoreError::corrupt("memory key is not UTF-8"))?
        .to_string();
    let record = KvRecord::decode(kv.value)?;
    if record.expired(now_ms()) {
        return Ok(None);
    }
    Ok(Some(KvEntry {
        key,
        expires_at_ms: record.expires_at_ms.or(kv.expire_ts),
        record,
    }))
}

/// The newest record of a key for a read-check-write under its lock; `None` if absent or
/// expired.
async fn latest_record(store: &Store, key: &[u8]) -> Result<Option<KvRecord>> {
    Ok(match store.engine.get_latest(key).await? {
        Some(kv) => Some(KvRecord::decode(kv.value)?).filter(|r| !r.expired(now_ms())),
        None => None,
    })
}

/// The change-log entry of a memory write: its owner is the key's user space, if any.
pub(crate) fn kv_change(op: ChangeOp, key: &str) -> ChangeEntry {
    let owner = kv_owner(key).filter(|o| !o.is_empty()).map(str::to_owned);
    ChangeEntry::new(op, owner)
}

fn new_version() -> u64 {
    rand::rng().next_u64()
}

impl Store {
    /// Reads a key (durable data only; expired keys are absent; keys the scope may not read
    /// are not found). Recently written or read keys are answered from the store's cache of
    /// values.
    pub async fn kv_get(&self, scope: &Scope, key: &str) -> Result<KvEntry> {
        check_key(key)?;
        let not_found = || StoreError::NotFound("key".into());
        if !scope.can_read_key(key) {
            return Err(not_found());
        }
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
        let entry = decode_entry(scope, kv)?.ok_or_else(not_found)?;
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
                StoreError::Forbidden { message, .. } => StoreError::Forbidden {
                    message,
                    index: None,
                },
                e => e,
            })?;
        out.pop().ok_or_else(|| StoreError::Internal {
            message: "a one-operation batch wrote nothing".into(),
            source: None,
        })
    }

    /// Deletes one key; `NotFound` if it does not exist, `Forbidden` if the scope may not
    /// write it.
    pub async fn kv_delete(&self, scope: &Scope, key: &str, condition: Condition) -> Result<()> {
        check_key(key)?;
        scope.check_write_key(key, None)?;
        let k = keys::kv(&scope.tenant, key);
        let (pending, cached) = {
            let _g = self.kv_locks.lock(&k).await;
            let Some(cur) = latest_record(self, &k).await? else {
                return Err(StoreError::NotFound("key".into()));
            };
            condition
                .check(Some(&cur))
                .map_err(|message| StoreError::PreconditionFailed {
                    message,
                    index: None,
                })?;
            let mut batch = WriteBatch::new();
            batch.delete(&k);
            let e = kv_change(ChangeOp::KvDeleted { key: key.into() }, key);
            let cached = self.kv_cache.begin(scope.tenant.as_str(), key);
            let pending = self.log.write(&scope.tenant, batch, vec![e]).await?;
            (pending, cached)
        };
        pending.durable().await?;
        cached.finish(KvChange::Dropped);
        Ok(())
    }

    /// Applies operations atomically: every condition holds, the scope may write every key
    /// and all are written in one batch, or nothing is written.
    pub async fn kv_batch(&self, scope: &Scope, ops: Vec<KvOp>) -> Result<Vec<KvWritten>> {
        if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
            return Err(StoreError::Invalid(format!(
                "a batch has 1-{MAX_BATCH_OPS} operations"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            check_key(op.key())?;
            scope.check_write_key(op.key(), Some(i))?;
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
                let current = latest_record(self, k).await?;
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
                        let expires_at_ms = ttl.map(|d| {
                            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                        });
                        let rec = KvRecord {
                            version: new_version(),
                            updated_at_ms: now,
                            content_type,
                            expires_at_ms,
                            value,
                        };
                        changes.push(match ttl {
                            None => KvChange::Put(CachedKv::new(&key, rec.clone(), None)),
                            Some(_) => KvChange::Dropped,
                        });
                        // The store expires the value itself (with a change-log entry); the
                        // engine's TTL, a grace period later, only reclaims what the sweep
                        // might miss.
                        let opts = PutOptions {
                            ttl: match ttl {
                                Some(d) => Ttl::ExpireAfterMillis(
                                    u64::try_from((d + EXPIRY_GRACE).as_millis())
                                        .unwrap_or(u64::MAX),
                                ),
                                None => Ttl::NoExpiry,
                            },
                        };
                        if let Some(at) = expires_at_ms {
                            let at = u64::try_from(at).unwrap_or(0);
                            batch.put(keys::expiry(at, t, &key), rec.version.to_be_bytes());
                        }
                        batch.put_with_options(k, rec.encode()?, &opts);
                        let json_object = rec.value.trim_ascii_start().first() == Some(&b'{');
                        entries.push(kv_change(
                            ChangeOp::KvPut {
                                key: key.clone(),
                                json_object: Some(json_object),
                                version: Some(rec.version),
                            },
                            &key,
                        ));
                        written.push(KvWritten {
                            key,
                            etag: Some(rec.etag()),
                            size: rec.value.len(),
                        });
                    }
                    KvOp::Delete { key, .. } => {
                        batch.delete(k);
                        entries.push(kv_change(ChangeOp::KvDeleted { key: key.clone() }, &key));
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
            let pending = self.log.write(t, batch, entries).await?;
            (written, pending, cache_writes.into_iter().zip(changes))
        };
        pending.durable().await?;
        for (write, change) in cached {
            write.finish(change);
        }
        Ok(written)
    }

    /// Lists the keys between two bounds on the key bytes (not the tenant prefix), in byte
    /// order, whether or not the scope may read them: the building block of listings.
    async fn kv_scan(
        &self,
        scope: &Scope,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        limit: usize,
    ) -> Result<KvPage> {
        let t = &scope.tenant;
        let start = match lower {
            Bound::Included(b) => Bound::Included(keys::kv_bytes(t, b)),
            Bound::Excluded(b) => Bound::Excluded(keys::kv_bytes(t, b)),
            Bound::Unbounded => Bound::Included(keys::space(t, keys::Space::Kv)),
        };
        let end = match upper {
            Bound::Included(b) => Bound::Included(keys::kv_bytes(t, b)),
            Bound::Excluded(b) => Bound::Excluded(keys::kv_bytes(t, b)),
            Bound::Unbounded => prefix_range(keys::space(t, keys::Space::Kv)).1,
        };
        self.kv_page(scope, (start, end), limit).await
    }

    /// Lists the keys starting with `prefix`, after `after` (exclusive), in byte order, that
    /// the scope may read. A scope acting for a user sees the shared keys and its own
    /// `users/<user>/` space: the listing reads three disjoint ranges in key order and never
    /// walks other users' keys.
    pub async fn kv_list(
        &self,
        scope: &Scope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage> {
        let own = scope.user.as_deref().map(user_space);
        let own_end = own.as_deref().map(|o| keys::prefix_end(o.as_bytes()));
        let prefix_end = keys::prefix_end(prefix.as_bytes());
        // The byte after `users/`'s `/`: every key from here on is past the user spaces.
        let past_users = keys::prefix_end(USER_SPACE_PREFIX.as_bytes());
        let segments: Vec<ByteRange> = match (&own, &own_end) {
            (Some(own), Some(own_end)) => vec![
                (
                    Bound::Unbounded,
                    Bound::Excluded(USER_SPACE_PREFIX.as_bytes()),
                ),
                (Bound::Included(own.as_bytes()), excl(own_end)),
                (
                    Bound::Included(past_users.as_deref().unwrap_or_default()),
                    Bound::Unbounded,
                ),
            ],
            _ => vec![(Bound::Unbounded, Bound::Unbounded)],
        };
        let mut entries: Vec<KvEntry> = Vec::new();
        for (lo, hi) in segments {
            let mut lower = max_lower(lo, Bound::Included(prefix.as_bytes()));
            if let Some(a) = after {
                lower = max_lower(lower, Bound::Excluded(a.as_bytes()));
            }
            let upper = min_upper(hi, excl(&prefix_end));
            let want = limit + 1 - entries.len();
            let page = self.kv_scan(scope, lower, upper, want).await?;
            entries.extend(page.entries);
            if entries.len() > limit {
                break;
            }
        }
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        Ok(KvPage { entries, has_more })
    }

    /// One page of a key range: at most `limit` entries, and whether more follow.
    async fn kv_page(&self, scope: &Scope, range: KeyRange, limit: usize) -> Result<KvPage> {
        let mut rows = self.engine.scan(range, false, limit + 1).await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let entries = rows
            .into_iter()
            .filter_map(|kv| decode_entry(scope, kv).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(KvPage { entries, has_more })
    }
}

/// A range of memory keys (bytes, without the tenant prefix).
type ByteRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn excl(b: &Option<Vec<u8>>) -> Bound<&[u8]> {
    b.as_deref().map_or(Bound::Unbounded, Bound::Excluded)
}

/// The tighter of two lower bounds.
fn max_lower<'a>(a: Bound<&'a [u8]>, b: Bound<&'a [u8]>) -> Bound<&'a [u8]> {
    use Bound::*;
    match (a, b) {
        (Unbounded, x) | (x, Unbounded) => x,
        (Included(x), Included(y)) => Included(x.max(y)),
        (Excluded(x), Excluded(y)) => Excluded(x.max(y)),
        (Included(i), Excluded(e)) | (Excluded(e), Included(i)) => {
            if i > e {
                Included(i)
            } else {
                Excluded(e)
            }
        }
    }
}

/// The tighter of two upper bounds.
fn min_upper<'a>(a: Bound<&'a [u8]>, b: Bound<&'a [u8]>) -> Bound<&'a [u8]> {
    use Bound::*;
    match (a, b) {
        (Unbounded, x) | (x, Unbounded) => x,
        (Included(x), Included(y)) => Included(x.min(y)),
        (Excluded(x), Excluded(y)) => Excluded(x.min(y)),
        (Included(i), Excluded(e)) | (Excluded(e), Included(i)) => {
            if i < e {
                Included(i)
            } else {
                Excluded(e)
            }
        }
    }
}
