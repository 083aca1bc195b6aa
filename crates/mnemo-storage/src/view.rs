//! Consistent streaming reads: a [`ReadView`] is one point in time of the whole store, and
//! its scans stream rows in key order without holding them all in memory.
//!
//! A listing built from pages ([`Store::list_items`], [`Store::kv_list`]) reads each page at
//! a different moment; a view reads everything at the same one: every write acknowledged
//! before [`Store::read_view`] was called is in it, nothing written after. Exports, SQL
//! scans and index rebuilds read through views. Each scan applies the scope's access rule
//! ([`crate::access`]): rows the scope may not read are never returned.

use crate::audit::AuditEntry;
use crate::changelog::ChangeEntry;
use crate::engine::{bounded, is_empty, live, prefix_range, scan_options, KeyRange};
use crate::ids::Scope;
use crate::kv::{decode_entry, KvEntry};
use crate::records::{from_json, ConversationRecord, StoredItem};
use crate::{keys, Result, Store, StoreError};
use slatedb::config::DurabilityLevel;
use slatedb::{DbIterator, DbReader, DbSnapshot, KeyValue};
use std::sync::Arc;
use std::time::Duration;

/// A consistent, durable point-in-time view of the store ([`Store::read_view`]).
pub struct ReadView {
    snapshot: Source,
    timeout: Duration,
}

/// What a view reads: a snapshot of the open database, or a reader pinned to a checkpoint
/// ([`crate::checkpoint`]).
#[derive(Clone)]
pub(crate) enum Source {
    Snapshot(Arc<DbSnapshot>),
    Reader(Arc<DbReader>),
}

impl Source {
    async fn scan_with_options(
        &self,
        range: KeyRange,
        opts: &slatedb::config::ScanOptions,
    ) -> std::result::Result<DbIterator, slatedb::Error> {
        match self {
            Source::Snapshot(s) => s.scan_with_options(range, opts).await,
            Source::Reader(r) => r.scan_with_options(range, opts).await,
        }
    }

    async fn get_key_value(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<KeyValue>, slatedb::Error> {
        match self {
            Source::Snapshot(s) => s.get_key_value(key).await,
            Source::Reader(r) => r.get_key_value(key).await,
        }
    }
}

/// Turns a stored row into a result row; `None` skips it (not visible to the scope).
pub(crate) type Decode<T> = Box<dyn FnMut(KeyValue) -> Result<Option<T>> + Send>;

/// Turns an index row into the key of the record it points to.
type Follow = Box<dyn Fn(&[u8]) -> Result<Vec<u8>> + Send>;

/// Rows of one scan of a [`ReadView`], in key order, read as they are consumed.
pub struct Rows<T> {
    iter: Option<DbIterator>,
    snapshot: Source,
    timeout: Duration,
    follow: Option<Follow>,
    decode: Decode<T>,
    skipped: u64,
}

impl<T> Rows<T> {
    /// The next row, or `None` at the end. Each read is bounded by the store's read timeout
    /// ([`StoreError::Unavailable`] after it). A record that fails to decode is an error
    /// ([`StoreError::Corrupt`], logged); the scan can go on after it.
    pub async fn next(&mut self) -> Result<Option<T>> {
        self.advance(false).await
    }

    /// Like [`Rows::next`], but passes over records that fail to decode (each is logged and
    /// counted in [`Rows::skipped`]), for readers that must not stop at one bad record. Engine
    /// failures are still errors.
    pub async fn next_skipping_corrupt(&mut self) -> Result<Option<T>> {
        self.advance(true).await
    }

    /// Records passed over by [`Rows::next_skipping_corrupt`] so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    async fn advance(&mut self, skip_corrupt: bool) -> Result<Option<T>> {
        loop {
            let Some(iter) = self.iter.as_mut() else {
                return Ok(None);
            };
            let next = match bounded(self.timeout, iter.next()).await {
                Ok(next) => next,
                Err(e) => {
                    // An engine failure ends the scan.
                    self.iter = None;
                    return Err(e);
                }
            };
            let Some(mut kv) = next else {
                self.iter = None;
                return Ok(None);
            };
            if !live(&kv) {
                continue;
            }
            if let Some(follow) = &self.follow {
                let key = match follow(&kv.key) {
                    Ok(key) => key,
                    Err(StoreError::Corrupt { .. }) if skip_corrupt => {
                        self.skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match bounded(self.timeout, self.snapshot.get_key_value(&key)).await? {
                    Some(target) if live(&target) => kv = target,
                    // An index entry whose record is gone in this view: nothing to return.
                    _ => continue,
                }
            }
            match (self.decode)(kv) {
                Ok(Some(row)) => return Ok(Some(row)),
                Ok(None) => {}
                Err(StoreError::Corrupt { .. }) if skip_corrupt => self.skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads every remaining row (for small scans and tests).
    pub async fn collect(mut self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        while let Some(row) = self.next().await? {
            out.push(row);
        }
        Ok(out)
    }

    /// The rows as a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<T>> + Send
    where
        T: Send + 'static,
    {
        futures::stream::unfold(Some(self), |rows| async move {
            let mut rows = rows?;
            match rows.next().await {
                Ok(Some(row)) => Some((Ok(row), Some(rows))),
                Ok(None) => None,
                // The error ends the stream.
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

impl Store {
    /// A consistent view of the whole store at one durable point: every write acknowledged
    /// before this call is in it, nothing written after. Waits for the writes already in the
    /// memtable to become durable (at most one write-ahead-log upload).
    pub async fn read_view(&self) -> Result<ReadView> {
        if let Some(reader) = self.engine.reader() {
            // A replica: its reader is the view (it moves only when the replica does).
            return Ok(ReadView::of_reader(reader, self.engine.read_timeout()));
        }
        Ok(ReadView {
            snapshot: Source::Snapshot(self.engine.snapshot().await?),
            timeout: self.engine.read_timeout(),
        })
    }
}

impl ReadView {
    pub(crate) fn of_reader(reader: Arc<DbReader>, timeout: Duration) -> ReadView {
        ReadView {
            snapshot: Source::Reader(reader),
            timeout,
        }
    }

    /// The live value under `key` in this view.
    pub(crate) async fn get(&self, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        Ok(bounded(self.timeout, self.snapshot.get_key_value(key))
            .await?
            .filter(live)
            .map(|kv| kv.value))
    }

    pub(crate) async fn rows<T>(
        &self,
        range: KeyRange,
        follow: Option<Follow>,
        decode: Decode<T>,
    ) -> Result<Rows<T>> {
        self.rows_ordered(range, false, follow, decode).await
    }

    async fn rows_ordered<T>(
        &self,
        range: KeyRange,
        descending: bool,
        follow: Option<Follow>,
        decode: Decode<T>,
    ) -> Result<Rows<T>> {
        let iter = if is_empty(&range) {
            None
        } else {
            let opts = scan_options(DurabilityLevel::Memory, descending);
            Some(bounded(self.timeout, self.snapshot.scan_with_options(range, &opts)).await?)
        };
        Ok(Rows {
            iter,
            snapshot: self.snapshot.clone(),
            timeout: self.timeout,
            follow,
            decode,
            skipped: 0,
        })
    }

    /// The conversations the scope may see, in id order. A scope acting for a user walks that
    /// user's entries of the owner index, never the rest of the tenant.
    pub async fn conversations(&self, scope: &Scope) -> Result<Rows<ConversationRecord>> {
        let decode: Decode<ConversationRecord> = {
            let scope = scope.clone();
            Box::new(move |kv| {
                let rec: ConversationRecord = from_json("conversation record", &kv.value)?;
                Ok(scope.can_see(rec.owner.as_deref()).then_some(rec))
            })
        };
        let t = &scope.tenant;
        match &scope.user {
            None => {
                let range = prefix_range(keys::space(t, keys::Space::Conversation));
                self.rows(range, None, decode).await
            }
            Some(owner) => {
                let (tenant, user) = (t.clone(), owner.clone());
                let follow: Follow = Box::new(move |key| {
                    let conv = keys::parse_owner_entry(&tenant, &user, key)
                        .ok_or_else(|| StoreError::corrupt("owner-index key"))?;
                    Ok(keys::conversation(&tenant, conv))
                });
                let range = prefix_range(keys::owner_prefix(t, owner));
                self.rows(range, Some(follow), decode).await
            }
        }
    }

    /// A conversation's record, if the scope may see it.
    pub async fn conversation(&self, scope: &Scope, id: &str) -> Result<ConversationRecord> {
        let not_found = || StoreError::NotFound("conversation".into());
        if !crate::ids::is_valid_id(id) {
            return Err(not_found());
        }
        let key = keys::conversation(&scope.tenant, id);
        let kv = bounded(self.timeout, self.snapshot.get_key_value(&key))
            .await?
            .filter(live)
            .ok_or_else(not_found)?;
        let rec: ConversationRecord = from_json("conversation record", &kv.value)?;
        if !scope.can_see(rec.owner.as_deref()) {
            return Err(not_found());
        }
        Ok(rec)
    }

    /// The items of a conversation in append order; not found if the scope may not see the
    /// conversation (or it does not exist in this view).
    pub async fn items(&self, scope: &Scope, conversation_id: &str) -> Result<Rows<StoredItem>> {
        self.conversation(scope, conversation_id).await?;
        self.items_of(scope, conversation_id, false).await
    }

    /// The items of a conversation, newest first (reads stop when the caller stops asking).
    /// Like [`ReadView::items`], not found if the scope may not see the conversation.
    pub async fn items_newest_first(
        &self,
        scope: &Scope,
        conversation_id: &str,
    ) -> Result<Rows<StoredItem>> {
        self.conversation(scope, conversation_id).await?;
        self.items_of(scope, conversation_id, true).await
    }

    /// The items of a conversation the caller has already read (and checked) the record of
    /// in this view, oldest or newest first.
    pub async fn items_of(
        &self,
        scope: &Scope,
        conversation_id: &str,
        newest_first: bool,
    ) -> Result<Rows<StoredItem>> {
        if !crate::ids::is_valid_id(conversation_id) {
            return Err(StoreError::NotFound("conversation".into()));
        }
        let decode: Decode<StoredItem> = Box::new(|kv| {
            let seq = keys::item_seq(&kv.key).ok_or_else(|| StoreError::corrupt("item key"))?;
            StoredItem::decode(seq, kv.value).map(Some)
        });
        let range = prefix_range(keys::items_prefix(&scope.tenant, conversation_id));
        self.rows_ordered(range, newest_first, None, decode).await
    }

    /// One item of a conversation the caller has already read (and checked) the record of in
    /// this view; `None` if the view does not hold it.
    pub async fn item(
        &self,
        scope: &Scope,
        conversation_id: &str,
        item_id: &str,
    ) -> Result<Option<StoredItem>> {
        if !crate::ids::is_valid_id(conversation_id) || !crate::ids::is_valid_id(item_id) {
            return Ok(None);
        }
        let t = &scope.tenant;
        let index = keys::item_id(t, conversation_id, item_id);
        let Some(kv) = bounded(self.timeout, self.snapshot.get_key_value(&index))
            .await?
            .filter(live)
        else {
            return Ok(None);
        };
        let seq: [u8; 8] = kv
            .value
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::corrupt("item id index entry"))?;
        let seq = u64::from_be_bytes(seq);
        let key = keys::item(t, conversation_id, seq);
        match bounded(self.timeout, self.snapshot.get_key_value(&key))
            .await?
            .filter(live)
        {
            Some(kv) => StoredItem::decode(seq, kv.value).map(Some),
            None => Ok(None),
        }
    }

    /// The tenant's admin audit log, oldest first. The caller checks that the scope may read
    /// it (administrators only); a user scope sees nothing.
    pub async fn audit(&self, scope: &Scope) -> Result<Rows<AuditEntry>> {
        let decode: Decode<AuditEntry> =
            Box::new(|kv| from_json("audit entry", &kv.value).map(Some));
        let range = if scope.user.is_some() {
            (
                std::ops::Bound::Excluded(Vec::new()),
                std::ops::Bound::Excluded(Vec::new()),
            )
        } else {
            prefix_range(keys::space(&scope.tenant, keys::Space::Audit))
        };
        self.rows(range, None, decode).await
    }

    /// The memory entries under `prefix` that the scope may read, in key order.
    pub async fn memory(&self, scope: &Scope, prefix: &str) -> Result<Rows<KvEntry>> {
        let decode: Decode<KvEntry> = {
            let scope = scope.clone();
            Box::new(move |kv| Ok(decode_entry(&scope, kv)?.filter(|e| scope.can_read_key(&e.key))))
        };
        let range = prefix_range(keys::kv(&scope.tenant, prefix));
        self.rows(range, None, decode).await
    }

    /// The position of `tenant`'s newest change-log entry in this view (0 when it has none):
    /// a reader of the view has seen every change up to it.
    pub async fn log_head(&self, tenant: &crate::TenantId) -> Result<u64> {
        let decode: Decode<u64> = Box::new(|kv| {
            keys::item_seq(&kv.key)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt("change-log key"))
        });
        let range = prefix_range(keys::space(tenant, keys::Space::Log));
        let mut rows = self.rows_ordered(range, true, None, decode).await?;
        Ok(rows.next().await?.unwrap_or(0))
    }

    /// Every tenant with any data in this view, in id order (stray keys with an invalid tenant
    /// are logged and passed over, as [`Store::tenants`] does).
    pub async fn tenants(&self) -> Result<Vec<crate::TenantId>> {
        let mut out = Vec::new();
        let mut start = keys::tenants_start();
        loop {
            let range = (
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(keys::tenants_end()),
            );
            let decode: Decode<Vec<u8>> = Box::new(|kv| Ok(Some(kv.key.to_vec())));
            let mut rows = self.rows(range, None, decode).await?;
            let Some(key) = rows.next().await? else { break };
            match keys::parse_tenant(&key) {
                (Some(tenant), Some(next)) => {
                    out.push(tenant);
                    start = next;
                }
                (None, Some(next)) => {
                    tracing::error!(
                        ?key,
                        "corrupt record: stored key with an invalid tenant id; skipped"
                    );
                    start = next;
                }
                (_, None) => {
                    tracing::error!(
                        ?key,
                        "corrupt record: stored key without a tenant separator"
                    );
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The change-log entries after position `after` that the scope may see, oldest first.
    pub async fn changes(&self, scope: &Scope, after: u64) -> Result<Rows<ChangeEntry>> {
        let decode: Decode<ChangeEntry> = {
            let scope = scope.clone();
            Box::new(move |kv| {
                let entry: ChangeEntry = from_json("change-log entry", &kv.value)?;
                Ok(scope.can_see_change(&entry).then_some(entry))
            })
        };
        let t = &scope.tenant;
        let (_, end) = prefix_range(keys::space(t, keys::Space::Log));
        let range = (std::ops::Bound::Excluded(keys::log(t, after)), end);
        self.rows(range, None, decode).await
    }
}
