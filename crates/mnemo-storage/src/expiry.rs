//! Expiry of memory values written with a TTL, as a change the store makes itself.
//!
//! A value written with a TTL carries its expiry time in its record, and an entry of the
//! expiry index (`s \0 expiry \0 <time> <tenant> \0 <key>`, holding the value's version) is
//! written in the same batch. Reads treat a value past its time as absent at once. The sweep
//! ([`Store::expire_due`], every [`SWEEP_INTERVAL`] in a server) walks the index up to now
//! and, under the key's lock, deletes each value that still has the indexed version, with a
//! `kv.expired` change-log entry in the same batch; entries of values overwritten or deleted
//! since are dropped. The index is stored data, so a restart loses no expiry: the first sweep
//! after it catches up. The engine's own TTL on the value is [`EXPIRY_GRACE`] longer and only
//! reclaims space should the sweep fall that far behind.

use crate::changelog::ChangeOp;
use crate::clock::now_ms;
use crate::kv::kv_change;
use crate::kv_cache::KvChange;
use crate::records::KvRecord;
use crate::{keys, Result, Store, StoreError};
use slatedb::WriteBatch;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

/// How much longer than its TTL the engine keeps a value (the sweep removes it first).
pub const EXPIRY_GRACE: Duration = Duration::from_secs(3600);

/// How often a server sweeps: a value's `kv.expired` entry follows its expiry time within
/// about this long (plus the time to write it).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Index entries handled per round of a sweep.
const SWEEP_CHUNK: usize = 256;

impl Store {
    /// Expires every value whose time has come (see the module docs). Returns how many
    /// values expired.
    pub async fn expire_due(&self) -> Result<usize> {
        let mut expired = 0;
        loop {
            let now = now_ms();
            let range = (
                Bound::Included(keys::expiry_prefix()),
                Bound::Excluded(keys::expiry_until(u64::try_from(now).unwrap_or(0) + 1)),
            );
            let rows = self.engine.scan_latest(range, false, SWEEP_CHUNK).await?;
            if rows.is_empty() {
                return Ok(expired);
            }
            let mut progressed = false;
            for row in rows {
                let mut batch = WriteBatch::new();
                batch.delete(&row.key);
                let parsed = keys::parse_expiry(&row.key).zip(
                    <[u8; 8]>::try_from(row.value.as_ref())
                        .ok()
                        .map(u64::from_be_bytes),
                );
                let Some(((at, tenant, key), version)) = parsed else {
                    // Not an entry this store writes: drop it, loudly.
                    tracing::error!(key = ?row.key, "corrupt record: expiry-index entry; dropped");
                    self.engine.write(batch).await?.durable().await?;
                    continue;
                };
                let k = keys::kv(&tenant, &key);
                let _g = self.kv_locks.lock(&k).await;
                let current = match self.engine.get_latest(&k).await? {
                    Some(kv) => Some(KvRecord::decode(kv.value)?),
                    None => None,
                };
                let due = match &current {
                    Some(rec) if rec.version == version => {
                        if !rec.expired(now) {
                            continue; // not yet by the record's own time
                        }
                        batch.delete(&k);
                        true
                    }
                    // Gone without a trace past the grace period: the engine reclaimed it
                    // after it expired.
                    None => {
                        let grace = i64::try_from(EXPIRY_GRACE.as_millis()).unwrap_or(i64::MAX);
                        i64::try_from(at).unwrap_or(i64::MAX).saturating_add(grace) <= now
                    }
                    // Overwritten or deleted since: nothing expires.
                    Some(_) => false,
                };
                progressed = true;
                if !due {
                    self.engine.write(batch).await?.durable().await?;
                    continue;
                }
                let cached = self.kv_cache.begin(tenant.as_str(), &key);
                let entry = kv_change(ChangeOp::KvExpired { key: key.clone() }, &key);
                let written = self.log.write(&tenant, batch, vec![entry]).await?;
                match written.durable().await {
                    Ok(()) => {
                        cached.finish(KvChange::Dropped);
                        expired += 1;
                    }
                    Err(e) => {
                        cached.finish(KvChange::Dropped);
                        return Err(e);
                    }
                }
            }
            if !progressed {
                // Only entries not due by their record's own time: the next sweep looks again.
                return Ok(expired);
            }
        }
    }

    /// Starts the sweep: [`Store::expire_due`] every [`SWEEP_INTERVAL`] until the store
    /// closes. Failures are logged and retried at the next tick.
    pub fn spawn_expiry(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                if !store.is_ready() {
                    continue;
                }
                match store.expire_due().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(expired = n, "memory values expired"),
                    Err(StoreError::Fenced) => return,
                    Err(e) => {
                        tracing::warn!(error = %crate::report(&e), "expiry sweep failed; retrying")
                    }
                }
            }
        })
    }
}
