//! The change log: one entry per mutation, written in the same atomic batch as the mutation.
//!
//! Entries live under `t \0 <tenant> \0 l <seq>`; `seq` is a per-tenant hybrid logical clock
//! ([`crate::clock::next_seq`]), so it is strictly increasing within a tenant and keeps
//! increasing across restarts even after old entries expire. Allocation and the memtable write
//! happen under one lock, so log order equals commit order. Entries carry ids and the owner of
//! what changed, never content, and expire after the configured retention.
//!
//! The log has any number of readers. Each [`Subscriber`] learns which tenants have newly
//! acknowledged (durable) entries, at its own pace, and reads them with [`ChangeLog::read`];
//! the search index is one subscriber among several.

use crate::clock::{next_seq, now_ms, now_us};
use crate::engine::{prefix_range, Engine, PendingWrite};
use crate::ids::TenantId;
use crate::records::{from_json, to_json};
use crate::{keys, Result};
use serde::{Deserialize, Serialize};
use slatedb::config::{PutOptions, Ttl};
use slatedb::WriteBatch;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

/// How much longer than the retention entries are kept, at most: a tenth of the retention,
/// up to an hour ([`ChangeLog::grace`]).
pub const RETENTION_GRACE: Duration = Duration::from_secs(3600);

/// What a change did. Stored as the entry's `op` field with the variant's fields beside it
/// (the names are the stored format: keep them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op")]
pub enum ChangeOp {
    /// A conversation was created (its initial items follow as [`ChangeOp::ItemsAdded`]).
    #[serde(rename = "conversation.created")]
    ConversationCreated {
        /// The conversation.
        conversation_id: String,
    },
    /// A conversation's metadata was replaced.
    #[serde(rename = "conversation.updated")]
    ConversationUpdated {
        /// The conversation.
        conversation_id: String,
    },
    /// A conversation was deleted: from this entry on it and all its items are gone (the
    /// items' storage is reclaimed afterwards, see [`ChangeOp::ItemsPurged`]).
    #[serde(rename = "conversation.deleted")]
    ConversationDeleted {
        /// The conversation.
        conversation_id: String,
    },
    /// Items were appended to a conversation, in this order.
    #[serde(rename = "item.added")]
    ItemsAdded {
        /// The conversation.
        conversation_id: String,
        /// The new items, oldest first.
        item_ids: Vec<String>,
    },
    /// Items were deleted from a conversation.
    #[serde(rename = "item.deleted")]
    ItemsDeleted {
        /// The conversation.
        conversation_id: String,
        /// The deleted items.
        item_ids: Vec<String>,
    },
    /// The stored items of a deleted conversation were removed (after its
    /// [`ChangeOp::ConversationDeleted`]; nothing visible changes).
    #[serde(rename = "items.purged")]
    ItemsPurged {
        /// The deleted conversation.
        conversation_id: String,
        /// The items removed by this batch.
        item_ids: Vec<String>,
    },
    /// A memory key was written.
    #[serde(rename = "kv.put")]
    KvPut {
        /// The key.
        key: String,
        /// Whether the value may be a JSON object (starts with `{`): derived indexes skip
        /// re-reading values that cannot be. `None` in entries of older versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_object: Option<bool>,
        /// The version written (its ETag is [`crate::KvRecord::etag`] of it). `None` in
        /// entries of older versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// A memory key was deleted.
    #[serde(rename = "kv.deleted")]
    KvDeleted {
        /// The key.
        key: String,
    },
    /// A memory value's TTL passed and the store removed it.
    #[serde(rename = "kv.expired")]
    KvExpired {
        /// The key.
        key: String,
    },
    /// Everything a user owned was erased (the conversation and key deletions precede this
    /// entry); the entry's owner is the user.
    #[serde(rename = "user.erased")]
    UserErased {},
    /// A user's research consent was set; the entry's owner is the user.
    #[serde(rename = "user.consent")]
    ConsentSet {
        /// True: their history may be exported for research.
        research: bool,
    },
}

impl ChangeOp {
    /// The public name of the change, as the change feed and the SQL `changes` table show it
    /// (`conversation.created`, `item.created`, `memory.put`, …).
    pub fn event_type(&self) -> &'static str {
        match self {
            ChangeOp::ConversationCreated { .. } => "conversation.created",
            ChangeOp::ConversationUpdated { .. } => "conversation.updated",
            ChangeOp::ConversationDeleted { .. } => "conversation.deleted",
            ChangeOp::ItemsAdded { .. } => "item.created",
            ChangeOp::ItemsDeleted { .. } | ChangeOp::ItemsPurged { .. } => "item.deleted",
            ChangeOp::KvPut { .. } => "memory.put",
            ChangeOp::KvDeleted { .. } => "memory.deleted",
            ChangeOp::KvExpired { .. } => "memory.expired",
            ChangeOp::UserErased {} => "user.erased",
            ChangeOp::ConsentSet { .. } => "user.consent",
        }
    }
}

/// One change, as stored in the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Position in the tenant's log (filled in at commit).
    #[serde(default)]
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The end user owning what changed; `None` for tenant-wide data (shared memory keys,
    /// conversations created without a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub op: ChangeOp,
}

impl ChangeEntry {
    /// A new entry, stamped now.
    pub fn new(op: ChangeOp, owner: Option<String>) -> Self {
        ChangeEntry {
            seq: 0,
            at_ms: now_ms(),
            owner,
            op,
        }
    }

    /// The conversation concerned, if any.
    pub fn conversation_id(&self) -> Option<&str> {
        match &self.op {
            ChangeOp::ConversationCreated { conversation_id }
            | ChangeOp::ConversationUpdated { conversation_id }
            | ChangeOp::ConversationDeleted { conversation_id }
            | ChangeOp::ItemsAdded {
                conversation_id, ..
            }
            | ChangeOp::ItemsDeleted {
                conversation_id, ..
            }
            | ChangeOp::ItemsPurged {
                conversation_id, ..
            } => Some(conversation_id),
            ChangeOp::KvPut { .. }
            | ChangeOp::KvDeleted { .. }
            | ChangeOp::KvExpired { .. }
            | ChangeOp::UserErased {}
            | ChangeOp::ConsentSet { .. } => None,
        }
    }
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
        .and_then(|kv| keys::seq_in_space(tenant, space, &kv.key))
        .unwrap_or(0))
}

/// What one subscriber has not taken yet: the tenants whose acknowledged position moved,
/// each at its newest position.
#[derive(Default)]
struct Inbox {
    moved: SyncMutex<HashMap<TenantId, u64>>,
    wake: Notify,
}

/// A reader of the change log: learns which tenants have new acknowledged entries.
///
/// Each subscriber has its own inbox, so readers never take news from one another. Dropping
/// it unsubscribes.
pub struct Subscriber {
    inbox: Arc<Inbox>,
}

impl Subscriber {
    /// The tenants whose acknowledged position moved since the previous call (or since the
    /// subscription), each with its newest acknowledged position.
    pub fn take_moved(&self) -> Vec<(TenantId, u64)> {
        let mut moved = self
            .inbox
            .moved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        moved.drain().collect()
    }

    /// Resolves after the next acknowledgement, or at once if one happened since the last
    /// call. Meant for one task per subscriber.
    pub async fn changed(&self) {
        self.inbox.wake.notified().await
    }
}

/// Acknowledged positions per tenant and the live subscribers' inboxes.
#[derive(Default)]
struct Acknowledged {
    at: HashMap<TenantId, u64>,
    inboxes: Vec<Weak<Inbox>>,
}

/// Commits batches together with their change-log entries, and tells subscribers about them.
///
/// Besides the log itself it tracks, per tenant, the newest acknowledged (durable) entry:
/// derived indexes answer "has everything acknowledged so far been applied?" with it.
pub struct ChangeLog {
    engine: Arc<Engine>,
    last_seq: Mutex<HashMap<TenantId, u64>>,
    acked: SyncMutex<Acknowledged>,
    retention: Duration,
}

/// A logged write on its way to durability; [`LoggedWrite::durable`] waits for it and then
/// records its log position as acknowledged.
pub(crate) struct LoggedWrite<'e> {
    pending: PendingWrite<'e>,
    log: &'e ChangeLog,
    tenant: TenantId,
    seq: u64,
}

impl LoggedWrite<'_> {
    /// Waits until the write is durable, then marks its entries acknowledged.
    pub(crate) async fn durable(self) -> Result<()> {
        self.pending.durable().await?;
        self.log.acknowledge(self.tenant, self.seq);
        Ok(())
    }
}

impl ChangeLog {
    /// A change log in `engine` whose entries expire after `retention`.
    pub(crate) fn new(engine: Arc<Engine>, retention: Duration) -> Self {
        ChangeLog {
            engine,
            last_seq: Mutex::new(HashMap::new()),
            acked: SyncMutex::new(Acknowledged::default()),
            retention,
        }
    }

    fn acknowledge(&self, tenant: TenantId, seq: u64) {
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let Acknowledged { at, inboxes } = &mut *acked;
        match at.get_mut(&tenant) {
            Some(e) if seq <= *e => return,
            Some(e) => *e = seq,
            None => {
                at.insert(tenant.clone(), seq);
            }
        }
        inboxes.retain(|weak| {
            let Some(inbox) = weak.upgrade() else {
                return false;
            };
            {
                let mut moved = inbox.moved.lock().unwrap_or_else(PoisonError::into_inner);
                let pos = moved.entry(tenant.clone()).or_insert(seq);
                *pos = (*pos).max(seq);
            }
            inbox.wake.notify_one();
            true
        });
    }

    /// A new reader: from now on it is told about every acknowledgement.
    pub fn subscribe(&self) -> Subscriber {
        let inbox = Arc::new(Inbox::default());
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.inboxes.push(Arc::downgrade(&inbox));
        Subscriber { inbox }
    }

    /// The newest acknowledged log position of a tenant in this process (0: none yet).
    /// Every entry at or below it is durable.
    pub fn acknowledged(&self, tenant: &TenantId) -> u64 {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.at.get(tenant).copied().unwrap_or(0)
    }

    /// The newest position written for a tenant (acknowledged or not), reading the stored
    /// log if this process has not written to the tenant yet.
    pub async fn newest(&self, tenant: &TenantId) -> Result<u64> {
        if let Some(s) = self.last_seq.lock().await.get(tenant) {
            return Ok(*s);
        }
        newest_seq(&self.engine, tenant, keys::Space::Log).await
    }

    /// The present as a log position when no write of `tenant` is in flight in this process
    /// (every entry it wrote is acknowledged): every later entry takes a larger sequence
    /// number, so a reader may move its position here without skipping one. `None` while
    /// writes are in flight (or one failed with an unknown outcome, until a later write is
    /// acknowledged).
    pub async fn quiet_head(&self, tenant: &TenantId) -> Result<Option<u64>> {
        // Under the lock that numbers writes: no entry is being numbered meanwhile.
        let last = self.last_seq.lock().await;
        let written = last.get(tenant).copied();
        match written {
            Some(w) if w > self.acknowledged(tenant) => Ok(None),
            _ => Ok(Some(now_us().max(written.unwrap_or(0)))),
        }
    }

    /// The newest durable entry's position (0: none).
    pub async fn durable_head(&self, tenant: &TenantId) -> Result<u64> {
        let newest = self
            .engine
            .scan(prefix_range(keys::space(tenant, keys::Space::Log)), true, 1)
            .await?;
        Ok(newest
            .first()
            .and_then(|kv| keys::seq_in_space(tenant, keys::Space::Log, &kv.key))
            .unwrap_or(0))
    }

    /// Adds `entries` to `batch` and writes it to the memtable, atomically and in log order.
    pub(crate) async fn write(
        &self,
        tenant: &TenantId,
        mut batch: WriteBatch,
        entries: Vec<ChangeEntry>,
    ) -> Result<LoggedWrite<'_>> {
        let mut last = self.last_seq.lock().await;
        let mut seq = match last.get(tenant) {
            Some(s) => *s,
            None => newest_seq(&self.engine, tenant, keys::Space::Log).await?,
        };
        let opts = PutOptions {
            // Entries outlive the retention readers are promised by a grace period, so the
            // oldest valid cursor handed to a reader stays readable while it comes back.
            ttl: Ttl::ExpireAfterMillis(
                u64::try_from((self.retention + self.grace()).as_millis()).unwrap_or(u64::MAX),
            ),
        };
        for mut e in entries {
            seq = next_seq(seq);
            e.seq = seq;
            batch.put_with_options(
                keys::log(tenant, seq),
                to_json("change-log entry", &e)?,
                &opts,
            );
        }
        let pending = self.engine.write(batch).await?;
        last.insert(tenant.clone(), seq);
        Ok(LoggedWrite {
            pending,
            log: self,
            tenant: tenant.clone(),
            seq,
        })
    }

    /// How long entries are kept for readers (they are stored [`ChangeLog::grace`] longer).
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How much longer than the retention entries are stored: a tenth of the retention, at
    /// most [`RETENTION_GRACE`]. A reader told the oldest valid cursor has this long to use it.
    pub fn grace(&self) -> Duration {
        (self.retention / 10).min(RETENTION_GRACE)
    }

    /// Whether the log is whole after position `seq`: replaying from it misses nothing but the
    /// entries an erasure removed (its `user.erased` entry follows them). Entries expire in
    /// commit order, each `retention` plus the grace period after its commit, so this holds
    /// while `seq` is younger than the retention, or while its entry is still stored. (An
    /// erasure may have removed the entry at `seq` itself: that alone does not cut the log.)
    pub async fn retains(&self, tenant: &TenantId, seq: u64) -> Result<bool> {
        let retention_us = u64::try_from(self.retention.as_micros()).unwrap_or(u64::MAX);
        if seq >= now_us().saturating_sub(retention_us) {
            return Ok(true);
        }
        Ok(self.engine.get(&keys::log(tenant, seq)).await?.is_some())
    }

    /// Reads up to `limit` entries with `seq > after`, oldest first (durable entries only).
    /// An entry that fails to decode is an error ([`crate::StoreError::Corrupt`]), never
    /// skipped.
    pub async fn read(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEntry>> {
        let (_, end) = prefix_range(keys::space(tenant, keys::Space::Log));
        let start = std::ops::Bound::Excluded(keys::log(tenant, after));
        let rows = self.engine.scan((start, end), false, limit).await?;
        rows.iter()
            .map(|kv| from_json("change-log entry", &kv.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_the_stored_format() {
        // Entries as earlier versions wrote them still decode, and new ones encode the same way.
        let old = br#"{"seq":7,"at_ms":1,"op":"item.added","conversation_id":"conv_a","item_ids":["msg_1","msg_2"],"owner":"alice"}"#;
        let e: ChangeEntry = serde_json::from_slice(old).unwrap();
        assert_eq!(
            e.op,
            ChangeOp::ItemsAdded {
                conversation_id: "conv_a".into(),
                item_ids: vec!["msg_1".into(), "msg_2".into()]
            }
        );
        assert_eq!(e.owner.as_deref(), Some("alice"));
        assert_eq!(e.conversation_id(), Some("conv_a"));
        let round: ChangeEntry = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(round, e);
        let kv = br#"{"seq":8,"at_ms":1,"op":"kv.put","key":"notes"}"#;
        let e: ChangeEntry = serde_json::from_slice(kv).unwrap();
        assert_eq!(
            e.op,
            ChangeOp::KvPut {
                key: "notes".into(),
                json_object: None,
                version: None
            }
        );
        let json = serde_json::to_value(ChangeEntry::new(
            ChangeOp::UserErased {},
            Some("bob".into()),
        ))
        .unwrap();
        assert_eq!(json["op"], "user.erased");
        assert_eq!(json["owner"], "bob");
        // An entry without the fields its op needs is corrupt, not a default.
        assert!(
            serde_json::from_slice::<ChangeEntry>(br#"{"at_ms":1,"op":"item.added"}"#).is_err()
        );
        assert!(serde_json::from_slice::<ChangeEntry>(br#"{"at_ms":1,"op":"nonsense"}"#).is_err());
    }
}
