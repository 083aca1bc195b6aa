//! The change log: one entry per mutation, written in the same atomic batch as the mutation.
//!
//! Entries live under `t \0 <tenant> \0 l <seq>`; `seq` is a per-tenant hybrid logical clock,
//! `max(previous + 1, now in microseconds)`, so it is strictly increasing within a tenant and
//! keeps increasing across restarts even after old entries expire. Allocation and the
//! memtable write happen under one lock, so log order equals commit order. Entries carry ids,
//! never content, and expire after the configured retention.

use crate::engine::{prefix_range, Engine, PendingWrite};
use crate::ids::TenantId;
use crate::{keys, Result};
use serde::{Deserialize, Serialize};
use slatedb::config::{PutOptions, Ttl};
use slatedb::WriteBatch;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// One change, as stored in the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChangeEntry {
    /// Position in the tenant's log (filled in at commit).
    #[serde(default)]
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What happened, e.g. `conversation.created`, `item.added`, `kv.put`.
    pub op: String,
    /// Conversation concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Items concerned, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_ids: Vec<String>,
    /// Key-value key concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Owner of the data concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// For `kv.put`: whether the value may be a JSON object (starts with `{`). Derived
    /// indexes skip re-reading values that cannot be. `None` in entries of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_object: Option<bool>,
}

impl ChangeEntry {
    /// A new entry for `op`, stamped now.
    pub fn new(op: &str) -> Self {
        ChangeEntry {
            seq: 0,
            at_ms: now_ms(),
            op: op.to_string(),
            conversation_id: None,
            item_ids: Vec::new(),
            key: None,
            owner: None,
            json_object: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The largest sequence number stored in a tenant keyspace keyed by `<seq: u64 BE>` (the
/// change log, the audit log), 0 when it is empty. Sees writes not yet durable.
pub(crate) async fn newest_seq(
    engine: &Engine,
    tenant: &TenantId,
    space: keys::Space,
) -> Result<u64> {
    let newest = engine
        .scan_latest(prefix_range(keys::space(tenant, space)), true, 1)
        .await?;
    Ok(newest
        .first()
        .and_then(|kv| keys::item_seq(&kv.key))
        .unwrap_or(0))
}

/// Commits batches together with their change-log entries.
///
/// Besides the log itself it tracks, per tenant, the newest acknowledged (durable) entry, and
/// wakes [`ChangeLog::changed`] waiters after each acknowledgement: derived indexes tail the
/// log with it and answer "has everything acknowledged so far been applied?".
pub struct ChangeLog {
    last_seq: Mutex<HashMap<TenantId, u64>>,
    acked: std::sync::Mutex<Acknowledged>,
    changed: tokio::sync::Notify,
    retention: Duration,
}

/// Acknowledged positions, and the tenants whose position moved since the consumer last
/// looked ([`ChangeLog::take_acknowledged`]), so it never walks every tenant per wake-up.
#[derive(Default)]
struct Acknowledged {
    at: HashMap<TenantId, u64>,
    moved: HashSet<TenantId>,
}

/// A logged write on its way to durability; [`LoggedWrite::durable`] waits for it and then
/// records its log position as acknowledged.
pub struct LoggedWrite<'e, 'l> {
    pending: PendingWrite<'e>,
    log: &'l ChangeLog,
    tenant: TenantId,
    seq: u64,
}

impl LoggedWrite<'_, '_> {
    /// Waits until the write is durable, then marks its entries acknowledged.
    pub async fn durable(self) -> Result<()> {
        self.pending.durable().await?;
        self.log.acknowledge(self.tenant, self.seq);
        Ok(())
    }
}

impl ChangeLog {
    /// A change log whose entries expire after `retention`.
    pub fn new(retention: Duration) -> Self {
        ChangeLog {
            last_seq: Mutex::new(HashMap::new()),
            acked: std::sync::Mutex::new(Acknowledged::default()),
            changed: tokio::sync::Notify::new(),
            retention,
        }
    }

    fn acknowledge(&self, tenant: TenantId, seq: u64) {
        {
            let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            let Acknowledged { at, moved } = &mut *acked;
            match at.get_mut(&tenant) {
                Some(e) if seq <= *e => return,
                Some(e) => *e = seq,
                None => {
                    at.insert(tenant.clone(), seq);
                }
            }
            moved.insert(tenant);
        }
        self.changed.notify_one();
    }

    /// The newest acknowledged log position of a tenant in this process (0: none yet).
    /// Every entry at or below it is durable.
    pub fn acknowledged(&self, tenant: &TenantId) -> u64 {
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        acked.at.get(tenant).copied().unwrap_or(0)
    }

    /// The tenants whose acknowledged position moved since the previous call, with their
    /// newest acknowledged position. Meant for one consumer (the search indexer), together
    /// with [`ChangeLog::changed`].
    pub fn take_acknowledged(&self) -> Vec<(TenantId, u64)> {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let Acknowledged { at, moved } = &mut *acked;
        moved
            .drain()
            .map(|t| {
                let seq = at.get(&t).copied().unwrap_or(0);
                (t, seq)
            })
            .collect()
    }

    /// Resolves after the next acknowledgement, or at once if one happened since the last
    /// call. Meant for one consumer (the search indexer).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The newest position written for a tenant (acknowledged or not), reading the stored
    /// log if this process has not written to the tenant yet.
    pub async fn newest(&self, engine: &Engine, tenant: &TenantId) -> Result<u64> {
        if let Some(s) = self.last_seq.lock().await.get(tenant) {
            return Ok(*s);
        }
        newest_seq(engine, tenant, keys::Space::Log).await
    }

    /// Adds `entries` to `batch` and writes it to the memtable, atomically and in log order.
    pub async fn write<'e>(
        &self,
        engine: &'e Arc<Engine>,
        tenant: &TenantId,
        mut batch: WriteBatch,
        entries: Vec<ChangeEntry>,
    ) -> Result<LoggedWrite<'e, '_>> {
        let mut last = self.last_seq.lock().await;
        let mut seq = match last.get(tenant) {
            Some(s) => *s,
            None => newest_seq(engine, tenant, keys::Space::Log).await?,
        };
        let opts = PutOptions {
            ttl: Ttl::ExpireAfterMillis(self.retention.as_millis() as u64),
        };
        for mut e in entries {
            seq = (seq + 1).max(now_us());
            e.seq = seq;
            batch.put_with_options(keys::log(tenant, seq), serde_json::to_vec(&e)?, &opts);
        }
        let pending = engine.write(batch).await?;
        last.insert(tenant.clone(), seq);
        Ok(LoggedWrite {
            pending,
            log: self,
            tenant: tenant.clone(),
            seq,
        })
    }

    /// How long entries are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Whether the log still holds the entry at `seq`. Entries expire in commit order (each
    /// lives `retention` from its commit), so if it does, every later entry is there too and
    /// replaying from `seq` misses nothing.
    pub async fn retains(&self, engine: &Engine, tenant: &TenantId, seq: u64) -> Result<bool> {
        Ok(engine.get(&keys::log(tenant, seq)).await?.is_some())
    }

    /// Reads up to `limit` entries with `seq > after`, oldest first (durable entries only).
    pub async fn read(
        &self,
        engine: &Engine,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEntry>> {
        let (_, end) = prefix_range(keys::space(tenant, keys::Space::Log));
        let start = std::ops::Bound::Excluded(keys::log(tenant, after));
        let rows = engine.scan((start, end), false, limit).await?;
        rows.iter()
            .map(|kv| Ok(serde_json::from_slice(&kv.value)?))
            .collect()
    }
}
