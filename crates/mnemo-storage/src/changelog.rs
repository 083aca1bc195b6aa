//! The change log: one entry per mutation, written in the same atomic batch as the mutation.
//!
//! Entries live under `t \0 <tenant> \0 l <seq>`; `seq` is a per-tenant hybrid logical clock
//! ([`crate::clock::next_seq`]), so it is strictly increasing within a tenant and keeps
//! increasing across restarts even after old entries expire. Allocation and the memtable write
//! happen under the tenant's own lock, so a tenant's log order equals its commit order, and
//! writes of different tenants never wait for each other ([`ChangeLog::write`]). Entries carry
//! ids and the owner of what changed, never content, and expire after the configured
//! retention.
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

/// How a tenant's log positions are handed out. Guarded by the tenant's own lock, which
/// [`ChangeLog::write`] holds from numbering a batch's entries until the batch is in the
/// memtable.
#[derive(Default)]
struct Numbering {
    /// The newest position handed to the engine; `None` until this process writes to the
    /// tenant (the first write reads the stored log).
    written: Option<u64>,
    /// The newest position [`ChangeLog::quiet_head`] handed out as the present: every entry
    /// numbered later lies above it.
    floor: u64,
}

/// Commits batches together with their change-log entries, and tells subscribers about them.
///
/// Besides the log itself it tracks, per tenant, the newest acknowledged (durable) entry:
/// derived indexes answer "has everything acknowledged so far been applied?" with it.
pub struct ChangeLog {
    engine: Arc<Engine>,
    /// One numbering lock per tenant seen since the start (entries are never removed, so a
    /// tenant always finds the same lock). The map's own lock is held only to find or add an
    /// entry, never across an await.
    numbering: SyncMutex<HashMap<TenantId, Arc<Mutex<Numbering>>>>,
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
            numbering: SyncMutex::new(HashMap::new()),
            acked: SyncMutex::new(Acknowledged::default()),
            retention,
        }
    }

    /// The numbering lock of `tenant`, added on first use.
    fn numbering(&self, tenant: &TenantId) -> Arc<Mutex<Numbering>> {
        let mut locks = self
            .numbering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(tenant) {
            return Arc::clone(lock);
        }
        let lock = Arc::new(Mutex::new(Numbering::default()));
        locks.insert(tenant.clone(), Arc::clone(&lock));
        lock
    }

    /// Holds `tenant`'s numbering lock until the guard is dropped: the tenant's writes stall
    /// (tests).
    #[cfg(test)]
    async fn hold(&self, tenant: &TenantId) -> tokio::sync::OwnedMutexGuard<Numbering> {
        self.numbering(tenant).lock_owned().await
    }

    pub(crate) fn acknowledge(&self, tenant: TenantId, seq: u64) {
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
        let written = self.numbering(tenant).lock().await.written;
        match written {
            Some(s) => Ok(s),
            None => newest_seq(&self.engine, tenant, keys::Space::Log).await,
        }
    }

    /// The present as a log position when no write of `tenant` is in flight in this process
    /// (every entry it wrote is acknowledged): every later entry takes a larger sequence
    /// number, so a reader may move its position here without skipping one. `None` while
    /// writes are in flight (or one failed with an unknown outcome, until a later write is
    /// acknowledged).
    ///
    /// It runs under the tenant's numbering lock, so no entry of the tenant is being numbered
    /// meanwhile: every entry numbered so far is at or below `written`, and if that is
    /// acknowledged, so is every earlier one (entries become durable in WAL order, which is
    /// their numbering order). The answer becomes the tenant's floor, so an entry numbered
    /// later takes a larger number even within the same microsecond (or after the clock
    /// stepped back). Other tenants' writes play no part: their entries live in their own logs.
    pub async fn quiet_head(&self, tenant: &TenantId) -> Result<Option<u64>> {
        let lock = self.numbering(tenant);
        let mut numbering = lock.lock().await;
        match numbering.written {
            Some(w) if w > self.acknowledged(tenant) => Ok(None),
            written => {
                let head = now_us().max(written.unwrap_or(0)).max(numbering.floor);
                numbering.floor = head;
                Ok(Some(head))
            }
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
    ///
    /// Numbering and the memtable write happen under `tenant`'s own lock, and only under it:
    /// writes of different tenants never wait for each other, while a tenant's writes reach
    /// the engine one at a time, each numbered after the one before. So within a tenant:
    ///
    /// * positions are strictly increasing in the order batches reach the memtable, hence in
    ///   WAL order, hence in the order they become durable: when an entry is acknowledged
    ///   ([`ChangeLog::acknowledged`]), every entry below it is durable too (or its write
    ///   failed), and a reader of durable entries never finds a gap filled in later;
    /// * [`ChangeLog::quiet_head`], under the same lock, sees every entry numbered so far.
    ///
    /// Log positions are per tenant and each tenant's log is its own key range, so the
    /// relative order of two tenants' writes does not matter and needs no common lock.
    pub(crate) async fn write(
        &self,
        tenant: &TenantId,
        mut batch: WriteBatch,
        entries: Vec<ChangeEntry>,
    ) -> Result<LoggedWrite<'_>> {
        let lock = self.numbering(tenant);
        let mut numbering = lock.lock().await;
        let mut seq = match numbering.written {
            Some(s) => s,
            None => newest_seq(&self.engine, tenant, keys::Space::Log).await?,
        }
        .max(numbering.floor);
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
        numbering.written = Some(seq);
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
    use crate::{EngineConfig, Scope, Store, StoreLocation};

    /// A store in a fresh local directory (removed when the returned guard drops).
    async fn open_store() -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::local(&dir.path().join("store")).unwrap();
        let store = Store::open(EngineConfig::new(location)).await.unwrap();
        (Arc::new(store), dir)
    }

    fn spawn_create(
        store: &Arc<Store>,
        scope: &Scope,
    ) -> tokio::task::JoinHandle<Result<crate::ConversationRecord>> {
        let (store, scope) = (Arc::clone(store), scope.clone());
        tokio::spawn(async move {
            let (rec, _) = store
                .create_conversation(&scope, Default::default(), vec![])
                .await?;
            Ok(rec)
        })
    }

    /// A tenant whose numbering lock is held (as it is while one of its writes waits for the
    /// memtable) stalls its own writes only: another tenant's write goes through meanwhile.
    /// With one lock for every tenant, tenant B's write would wait for tenant A's lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenants_never_wait_for_each_others_lock() {
        let (store, _dir) = open_store().await;
        let a = Scope::tenant(TenantId::new("tenant-a").unwrap());
        let b = Scope::tenant(TenantId::new("tenant-b").unwrap());
        spawn_create(&store, &a).await.unwrap().unwrap();
        let a_before = store.log.newest(&a.tenant).await.unwrap();

        let held = store.log.hold(&a.tenant).await;
        let a_write = spawn_create(&store, &a);
        let b_rec = tokio::time::timeout(Duration::from_secs(30), spawn_create(&store, &b))
            .await
            .expect("tenant b's write waited for tenant a's lock")
            .unwrap()
            .unwrap();
        let b_log = store.log.read(&b.tenant, 0, 10).await.unwrap();
        assert_eq!(b_log.len(), 1);
        assert_eq!(b_log[0].conversation_id(), Some(b_rec.id.as_str()));
        assert_eq!(store.log.acknowledged(&b.tenant), b_log[0].seq);
        // Tenant A's own write cannot be numbered while its lock is held.
        assert!(!a_write.is_finished(), "tenant a's write passed its lock");
        assert_eq!(store.log.acknowledged(&a.tenant), a_before);

        drop(held);
        let a_rec = a_write.await.unwrap().unwrap();
        let a_log = store.log.read(&a.tenant, 0, 10).await.unwrap();
        assert_eq!(a_log.len(), 2);
        assert_eq!(a_log[1].conversation_id(), Some(a_rec.id.as_str()));
        assert!(a_log[1].seq > a_before);
        assert_eq!(store.log.acknowledged(&a.tenant), a_log[1].seq);
        store.close().await.unwrap();
    }

    /// Under concurrent writes of several tenants, each tenant's log lists its writes in the
    /// order they were committed, every write once, all acknowledged; once quiet, the head
    /// handed out lies below every later entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_tenants_log_follows_its_commit_order() {
        let (store, _dir) = open_store().await;
        let scopes: Vec<Scope> = ["t1", "t2", "t3"]
            .iter()
            .map(|t| Scope::tenant(TenantId::new(*t).unwrap()))
            .collect();
        let mut convs = Vec::new();
        for s in &scopes {
            convs.push(spawn_create(&store, s).await.unwrap().unwrap().id);
        }
        let mut tasks = Vec::new();
        for (s, conv) in scopes.iter().zip(&convs) {
            for i in 0..10 {
                let (store, s, conv) = (Arc::clone(&store), s.clone(), conv.clone());
                tasks.push(tokio::spawn(async move {
                    let id = crate::ids::generate("msg_");
                    let json = format!(r#"{{"id":"{id}","type":"message","content":"{i}"}}"#);
                    let item = crate::NewItem {
                        id,
                        client_id: false,
                        json: json.into(),
                        vector: None,
                    };
                    store.append_items(&s, &conv, vec![item]).await
                }));
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for (s, conv) in scopes.iter().zip(&convs) {
            let t = &s.tenant;
            let log = store.log.read(t, 0, 100).await.unwrap();
            assert_eq!(log.len(), 11, "{t}: one entry per write");
            assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
            // Appends to one conversation are committed in item order: the log has them so.
            let logged: Vec<String> = log
                .iter()
                .filter_map(|e| match &e.op {
                    ChangeOp::ItemsAdded { item_ids, .. } => Some(item_ids.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            let page = store
                .list_items(s, conv, None, 100, crate::Order::Asc)
                .await
                .unwrap();
            let committed: Vec<String> = page.items.iter().map(|i| i.id.clone()).collect();
            assert_eq!(logged, committed, "{t}");
            let last = log.last().unwrap().seq;
            assert_eq!(store.log.acknowledged(t), last);
            assert_eq!(store.log.newest(t).await.unwrap(), last);
            let head = store.log.quiet_head(t).await.unwrap().expect("quiet");
            assert!(head >= last);
            spawn_create(&store, s).await.unwrap().unwrap();
            let next = store.log.read(t, last, 10).await.unwrap();
            assert_eq!(next.len(), 1);
            assert!(
                next[0].seq > head,
                "an entry after the quiet head lies above it"
            );
        }
        store.close().await.unwrap();
    }

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
