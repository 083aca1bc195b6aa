//! Conversations and their items.
//!
//! Appends to one conversation are serialised by that conversation's lock: the lock covers
//! reading the conversation record (which holds the tail: last sequence number and item id),
//! checking client-supplied ids and writing the batch (items, index entries, updated record,
//! change-log entry) to the memtable; it is released before the durability wait, so
//! concurrent appends to one conversation still share WAL uploads.

use crate::changelog::{ChangeEntry, ChangeOp};
use crate::clock::now_ms;
use crate::engine::{prefix_range, KeyRange};
use crate::ids::{self, Scope};
use crate::records::{from_json, to_json, ConversationRecord, StoredItem, MAX_VECTOR_DIMENSIONS};
use crate::tail_cache::TailChange;
use crate::{keys, Result, Store, StoreError};
use bytes::Bytes;
use serde_json::{Map, Value};
use slatedb::WriteBatch;
use std::ops::Bound;
use std::sync::Arc;

/// An item to append: its final id and its JSON (which already contains the id).
#[derive(Clone, Debug)]
pub struct NewItem {
    /// Item id.
    pub id: String,
    /// True when the client chose the id (it must then be unique in the conversation).
    pub client_id: bool,
    /// The item as a JSON object.
    pub json: Bytes,
    /// An embedding supplied by the client (stored beside the item, not inside its JSON).
    pub vector: Option<Vec<f32>>,
}

/// One page of items.
#[derive(Clone, Debug)]
pub struct ItemPage {
    /// Items in the requested order, shared with the conversation tail cache (a page served
    /// from the cache copies pointers, not items).
    pub items: Vec<Arc<StoredItem>>,
    /// Whether more items follow in that order.
    pub has_more: bool,
}

/// What [`Store::set_item_vector`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorWriteBack {
    /// The vector was written into the item's record.
    Written,
    /// The item already has a vector; nothing was written.
    HasVector,
    /// The item or its conversation no longer exists; nothing was written.
    Gone,
}

/// Sort order of an item listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

fn not_found(what: &str) -> StoreError {
    StoreError::NotFound(what.to_string())
}

impl Store {
    /// Reads a conversation's durable record if the scope may see it.
    pub async fn get_conversation(&self, scope: &Scope, id: &str) -> Result<ConversationRecord> {
        self.read_conversation(scope, id, false).await
    }

    /// Reads the newest record (including writes in flight); call under the conversation lock.
    async fn latest_conversation(&self, scope: &Scope, id: &str) -> Result<ConversationRecord> {
        self.read_conversation(scope, id, true).await
    }

    /// The record from the tail cache (a cached record has no write in flight, so it is both
    /// the durable and the newest one), else from the engine: durable data only, or also
    /// writes in flight (`latest`).
    async fn read_conversation(
        &self,
        scope: &Scope,
        id: &str,
        latest: bool,
    ) -> Result<ConversationRecord> {
        if !ids::is_valid_id(id) {
            return Err(not_found("conversation"));
        }
        // Only an open engine answers reads (from the cache too); otherwise it reports why not.
        let cached = self
            .engine
            .is_ready()
            .then(|| self.tails.record(scope.tenant.as_str(), id));
        let rec = match cached {
            Some(Ok(rec)) => rec,
            _ => {
                let key = keys::conversation(&scope.tenant, id);
                let v = if latest {
                    self.engine.get_latest(&key).await?.map(|kv| kv.value)
                } else {
                    self.engine.get(&key).await?
                };
                from_json(
                    "conversation record",
                    &v.ok_or_else(|| not_found("conversation"))?,
                )?
            }
        };
        if !scope.can_see(rec.owner.as_deref()) {
            return Err(not_found("conversation"));
        }
        Ok(rec)
    }

    /// Creates a conversation owned by the scope's user, with optional initial items.
    pub async fn create_conversation(
        &self,
        scope: &Scope,
        metadata: Map<String, Value>,
        items: Vec<NewItem>,
    ) -> Result<(ConversationRecord, Vec<StoredItem>)> {
        check_unique_in_request(&items)?;
        let now = now_ms();
        let mut rec = ConversationRecord {
            id: ids::generate_tagged("conv_", self.id_tag.as_deref()),
            created_at: now / 1000,
            metadata,
            owner: scope.user.clone(),
            last_seq: 0,
            last_item: None,
            updated_ms: Some(now),
        };
        let t = &scope.tenant;
        let mut batch = WriteBatch::new();
        let stored = stage_items(&mut batch, scope, &mut rec, items)?;
        batch.put(
            keys::conversation(t, &rec.id),
            to_json("conversation record", &rec)?,
        );
        if let Some(owner) = &rec.owner {
            batch.put(keys::owner(t, owner, &rec.id), b"");
        }
        let created = ChangeEntry::new(
            ChangeOp::ConversationCreated {
                conversation_id: rec.id.clone(),
            },
            rec.owner.clone(),
        );
        let mut entries = vec![created];
        entries.extend(items_added(&rec, &stored));
        let tail = self.tails.begin(t.as_str(), &rec.id);
        self.log.write(t, batch, entries).await?.durable().await?;
        tail.finish(TailChange::Created(rec.clone(), stored.clone()));
        Ok((rec, stored))
    }

    /// Replaces a conversation's metadata.
    pub async fn update_conversation(
        &self,
        scope: &Scope,
        id: &str,
        metadata: Map<String, Value>,
    ) -> Result<ConversationRecord> {
        let (rec, pending, tail) = {
            let _g = self.conv_locks.lock(id).await;
            let mut rec = self.latest_conversation(scope, id).await?;
            rec.metadata = metadata;
            rec.updated_ms = Some(now_ms().max(rec.updated_ms.unwrap_or(0)));
            let mut batch = WriteBatch::new();
            batch.put(
                keys::conversation(&scope.tenant, id),
                to_json("conversation record", &rec)?,
            );
            let e = ChangeEntry::new(
                ChangeOp::ConversationUpdated {
                    conversation_id: rec.id.clone(),
                },
                rec.owner.clone(),
            );
            let tail = self.tails.begin(scope.tenant.as_str(), id);
            let pending = self.log.write(&scope.tenant, batch, vec![e]).await?;
            (rec, pending, tail)
        };
        pending.durable().await?;
        tail.finish(TailChange::Updated(rec.clone()));
        Ok(rec)
    }

    /// Deletes a conversation and all its items.
    ///
    /// Returns once the first of two phases is durable: one atomic write removes the record
    /// and its owner-index entry and leaves a purge marker, and from then on every read of
    /// the conversation or its items is 404 (each read path checks the record first; the tail
    /// cache drops the conversation). The items are then deleted in the background (see
    /// `purge.rs`): a few purges at a time per store, retried on failure, and finished
    /// by [`Store::resume_purges`] at the next open if a crash or a shutdown interrupts them.
    /// [`Store::purges_idle`] waits for them. The purge marker holds the conversation's owner,
    /// so the purge's change-log entries carry it too.
    pub async fn delete_conversation(&self, scope: &Scope, id: &str) -> Result<()> {
        let owner = self.delete_conversation_record(scope, id).await?;
        self.purges.spawn(&scope.tenant, id, owner);
        Ok(())
    }

    /// The first phase of [`Store::delete_conversation`]: removes the record and owner-index
    /// entry and writes the purge marker, in one durable write. Returns the owner.
    pub(crate) async fn delete_conversation_record(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<Option<String>> {
        let t = &scope.tenant;
        let (tail, pending, owner) = {
            let _g = self.conv_locks.lock(id).await;
            let rec = self.latest_conversation(scope, id).await?;
            let mut batch = WriteBatch::new();
            batch.delete(keys::conversation(t, id));
            if let Some(owner) = &rec.owner {
                batch.delete(keys::owner(t, owner, id));
            }
            batch.put(
                keys::purge(t, id),
                rec.owner.as_deref().unwrap_or("").as_bytes(),
            );
            let e = ChangeEntry::new(
                ChangeOp::ConversationDeleted {
                    conversation_id: rec.id.clone(),
                },
                rec.owner.clone(),
            );
            let tail = self.tails.begin(t.as_str(), id);
            (tail, self.log.write(t, batch, vec![e]).await?, rec.owner)
        };
        pending.durable().await?;
        tail.finish(TailChange::Deleted);
        Ok(owner)
    }

    /// Appends 1–N items atomically, in order. Returns them as stored.
    pub async fn append_items(
        &self,
        scope: &Scope,
        id: &str,
        items: Vec<NewItem>,
    ) -> Result<Vec<StoredItem>> {
        check_unique_in_request(&items)?;
        let t = &scope.tenant;
        let (stored, rec, pending, tail) = {
            let _g = self.conv_locks.lock(id).await;
            let mut rec = self.latest_conversation(scope, id).await?;
            for it in items.iter().filter(|i| i.client_id) {
                if self
                    .engine
                    .get_latest(&keys::item_id(t, id, &it.id))
                    .await?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!(
                        "item id {} already exists in this conversation",
                        it.id
                    )));
                }
            }
            let mut batch = WriteBatch::new();
            let stored = stage_items(&mut batch, scope, &mut rec, items)?;
            batch.put(
                keys::conversation(t, id),
                to_json("conversation record", &rec)?,
            );
            let entries = items_added(&rec, &stored).into_iter().collect();
            let tail = self.tails.begin(t.as_str(), id);
            let pending = self.log.write(t, batch, entries).await?;
            (stored, rec, pending, tail)
        };
        pending.durable().await?;
        tail.finish(TailChange::Appended(rec, stored.clone()));
        Ok(stored)
    }

    /// Looks up the sequence number of an item (durable data only).
    async fn item_seq(&self, scope: &Scope, conv: &str, item_id: &str) -> Result<Option<u64>> {
        if !ids::is_valid_id(item_id) {
            return Ok(None);
        }
        let v = self
            .engine
            .get(&keys::item_id(&scope.tenant, conv, item_id))
            .await?;
        Ok(v.and_then(|b| Some(u64::from_be_bytes(b.as_ref().try_into().ok()?))))
    }

    /// Lists items. `after` is an item id of this conversation (exclusive cursor).
    pub async fn list_items(
        &self,
        scope: &Scope,
        id: &str,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<ItemPage> {
        let t = &scope.tenant;
        // The first page (either order) may come from the tail cache.
        let miss = match after {
            None if !self.engine.is_ready() => None,
            None => match self.tails.page(t.as_str(), id, limit, order == Order::Desc) {
                Ok(p) if scope.can_see(p.rec.owner.as_deref()) => {
                    return Ok(ItemPage {
                        items: p.items,
                        has_more: p.has_more,
                    })
                }
                Ok(_) => return Err(not_found("conversation")),
                Err(miss) => Some(miss),
            },
            Some(_) => None,
        };
        let rec = self.get_conversation(scope, id).await?;
        let (start, end) = prefix_range(keys::items_prefix(t, id));
        let cursor = match after {
            None => None,
            Some(a) => Some(self.item_seq(scope, id, a).await?.ok_or_else(|| {
                StoreError::Invalid(format!("after: {a:?} is not an item of this conversation"))
            })?),
        };
        let mut rows = None;
        if order == Order::Desc {
            // Newest first: items below `below` (exclusive). Sequence numbers are dense unless
            // items were deleted, so the page is usually the ascending range
            // [below - (limit + 1), below), which SlateDB scans much more cheaply than a
            // descending iterator. Gaps (deleted items) fall back to the descending scan.
            let below = cursor.unwrap_or(rec.last_seq.saturating_add(1));
            let from = below.saturating_sub(limit as u64 + 1).max(1);
            let range = (
                Bound::Included(keys::item(t, id, from)),
                Bound::Excluded(keys::item(t, id, below)),
            );
            let mut asc = self.engine.scan(range, false, limit + 1).await?;
            if asc.len() == limit + 1 || from == 1 {
                asc.reverse();
                rows = Some(asc);
            }
        }
        let rows = match rows {
            Some(r) => r,
            None => {
                let range: KeyRange = match (cursor, order) {
                    (None, _) => (start, end),
                    (Some(seq), Order::Asc) => (Bound::Excluded(keys::item(t, id, seq)), end),
                    (Some(seq), Order::Desc) => (start, Bound::Excluded(keys::item(t, id, seq))),
                };
                self.engine
                    .scan(range, order == Order::Desc, limit + 1)
                    .await?
            }
        };
        let mut items: Vec<Arc<StoredItem>> =
            decode_items(rows)?.into_iter().map(Arc::new).collect();
        let has_more = items.len() > limit;
        if let Some(miss) = miss {
            // The newest `limit + 1` items, or all of them: a tail of the conversation.
            if order == Order::Desc || !has_more {
                let mut asc = items.clone();
                if order == Order::Desc {
                    asc.reverse();
                }
                self.tails.fill(miss, t.as_str(), &rec, asc, !has_more);
            }
        }
        items.truncate(limit);
        Ok(ItemPage { items, has_more })
    }

    /// Conversation records of a tenant in id order, after `after`, at most `limit` (for
    /// index rebuilds and exports; tenant-wide, no user filter).
    pub async fn scan_conversations(
        &self,
        tenant: &crate::TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationRecord>> {
        let (start, end) = prefix_range(keys::space(tenant, keys::Space::Conversation));
        let start = match after {
            Some(a) => Bound::Excluded(keys::conversation(tenant, a)),
            None => start,
        };
        let rows = self.engine.scan((start, end), false, limit).await?;
        rows.iter()
            .map(|kv| from_json("conversation record", &kv.value))
            .collect()
    }

    /// Every tenant that has any data, in id order.
    pub async fn tenants(&self) -> Result<Vec<crate::TenantId>> {
        let mut out = Vec::new();
        let mut start = keys::tenants_start();
        loop {
            let range = (Bound::Included(start), Bound::Excluded(keys::tenants_end()));
            let rows = self.engine.scan(range, false, 1).await?;
            let Some(kv) = rows.first() else { break };
            match keys::parse_tenant(&kv.key) {
                (Some(tenant), Some(next)) => {
                    out.push(tenant);
                    start = next;
                }
                // Keys are built from validated tenant ids only: report stray keys and walk on
                // past them, so one bad key does not hide every tenant after it.
                (None, Some(next)) => {
                    tracing::error!(key = ?kv.key, "corrupt record: stored key with an invalid tenant id; skipped");
                    start = next;
                }
                (_, None) => {
                    tracing::error!(key = ?kv.key, "corrupt record: stored key without a tenant separator");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Reads one item.
    pub async fn get_item(&self, scope: &Scope, id: &str, item_id: &str) -> Result<StoredItem> {
        if self.engine.is_ready() {
            if let Ok((owner, item)) = self.tails.item(scope.tenant.as_str(), id, item_id) {
                if !scope.can_see(owner.as_deref()) {
                    return Err(not_found("conversation"));
                }
                return Ok(item);
            }
        }
        self.get_conversation(scope, id).await?;
        let seq = self
            .item_seq(scope, id, item_id)
            .await?
            .ok_or_else(|| not_found("item"))?;
        let v = self
            .engine
            .get(&keys::item(&scope.tenant, id, seq))
            .await?
            .ok_or_else(|| not_found("item"))?;
        StoredItem::decode(seq, v)
    }

    /// Stores a vector the server computed from an item's text (built-in embedder) in the
    /// item's record, if the item still exists and has no vector yet; the record is marked
    /// so the vector reads back with [`StoredItem::vector_builtin`] set.
    ///
    /// The vector is derived data, so this write is narrower than a mutation: it writes no
    /// change-log entry (nothing observable changed) and does not wait for durability (it
    /// becomes durable with the next WAL upload; a crash before that only loses work that is
    /// done again). It runs under the conversation's lock and re-reads the newest state, as
    /// deletes do, so it never brings back a deleted item or conversation.
    pub async fn set_item_vector(
        &self,
        tenant: &crate::TenantId,
        conversation_id: &str,
        item_id: &str,
        vector: Vec<f32>,
    ) -> Result<VectorWriteBack> {
        if vector.is_empty() || vector.len() > MAX_VECTOR_DIMENSIONS {
            return Err(StoreError::Invalid(format!(
                "an item vector has 1-{MAX_VECTOR_DIMENSIONS} dimensions, not {}",
                vector.len()
            )));
        }
        let scope = Scope::tenant(tenant.clone());
        let _g = self.conv_locks.lock(conversation_id).await;
        match self.latest_conversation(&scope, conversation_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Ok(VectorWriteBack::Gone),
            Err(e) => return Err(e),
        }
        if !ids::is_valid_id(item_id) {
            return Ok(VectorWriteBack::Gone);
        }
        let Some(idx) = self
            .engine
            .get_latest(&keys::item_id(tenant, conversation_id, item_id))
            .await?
        else {
            return Ok(VectorWriteBack::Gone);
        };
        let seq = u64::from_be_bytes(
            idx.value
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::corrupt("item-id index entry"))?,
        );
        let key = keys::item(tenant, conversation_id, seq);
        let Some(kv) = self.engine.get_latest(&key).await? else {
            return Ok(VectorWriteBack::Gone);
        };
        let mut item = StoredItem::decode(seq, kv.value)?;
        if item.vector.is_some() {
            return Ok(VectorWriteBack::HasVector);
        }
        item.vector = Some(vector);
        item.vector_builtin = true;
        let mut batch = WriteBatch::new();
        batch.put(key, item.encode()?);
        let tail = self.tails.begin(tenant.as_str(), conversation_id);
        let pending = self.engine.write(batch).await?;
        // Not awaited on purpose (see above): the next WAL upload carries it. The cached tail
        // takes the vector now; readers see the same vector from the engine once it is durable,
        // and a lost write is recomputed to the same value.
        drop(pending);
        tail.finish(TailChange::ItemReplaced(item));
        Ok(VectorWriteBack::Written)
    }

    /// Deletes one item; returns the conversation.
    pub async fn delete_item(
        &self,
        scope: &Scope,
        id: &str,
        item_id: &str,
    ) -> Result<ConversationRecord> {
        let t = &scope.tenant;
        let (rec, pending, tail, seq) = {
            let _g = self.conv_locks.lock(id).await;
            let rec = self.latest_conversation(scope, id).await?;
            if !ids::is_valid_id(item_id) {
                return Err(not_found("item"));
            }
            let idx = keys::item_id(t, id, item_id);
            let kv = self
                .engine
                .get_latest(&idx)
                .await?
                .ok_or_else(|| not_found("item"))?;
            let seq = u64::from_be_bytes(
                kv.value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::corrupt("item-id index entry"))?,
            );
            let mut batch = WriteBatch::new();
            batch.delete(idx);
            batch.delete(keys::item(t, id, seq));
            let e = ChangeEntry::new(
                ChangeOp::ItemsDeleted {
                    conversation_id: id.to_string(),
                    item_ids: vec![item_id.to_string()],
                },
                rec.owner.clone(),
            );
            let tail = self.tails.begin(t.as_str(), id);
            let pending = self.log.write(t, batch, vec![e]).await?;
            (rec, pending, tail, seq)
        };
        pending.durable().await?;
        tail.finish(TailChange::ItemDeleted(seq));
        Ok(rec)
    }
}

/// Decodes item rows (in the order given).
fn decode_items(rows: Vec<slatedb::KeyValue>) -> Result<Vec<StoredItem>> {
    rows.into_iter()
        .map(|kv| {
            let seq = keys::item_seq(&kv.key).ok_or_else(|| StoreError::corrupt("item key"))?;
            StoredItem::decode(seq, kv.value)
        })
        .collect()
}

fn check_unique_in_request(items: &[NewItem]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for it in items {
        if !seen.insert(it.id.as_str()) {
            return Err(StoreError::Conflict(format!(
                "item id {} appears twice in the request",
                it.id
            )));
        }
    }
    Ok(())
}

/// Adds items (and their id index entries) to a batch, numbering them after the
/// conversation's last sequence number, and advances the record's tail.
fn stage_items(
    batch: &mut WriteBatch,
    scope: &Scope,
    rec: &mut ConversationRecord,
    items: Vec<NewItem>,
) -> Result<Vec<StoredItem>> {
    // Append times never decrease along a conversation, even if the clock steps back, so its
    // key order (seq) is also its time order.
    let now = now_ms().max(rec.updated_ms.unwrap_or(0));
    if !items.is_empty() {
        rec.updated_ms = Some(now);
    }
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        rec.last_seq += 1;
        let stored = StoredItem {
            id: it.id,
            seq: rec.last_seq,
            created_at_ms: now,
            parent: rec.last_item.take(),
            json: it.json,
            vector: it.vector,
            vector_builtin: false,
        };
        batch.put(
            keys::item(&scope.tenant, &rec.id, stored.seq),
            stored.encode()?,
        );
        batch.put(
            keys::item_id(&scope.tenant, &rec.id, &stored.id),
            stored.seq.to_be_bytes(),
        );
        rec.last_item = Some(stored.id.clone());
        out.push(stored);
    }
    Ok(out)
}

fn items_added(rec: &ConversationRecord, items: &[StoredItem]) -> Option<ChangeEntry> {
    if items.is_empty() {
        return None;
    }
    Some(ChangeEntry::new(
        ChangeOp::ItemsAdded {
            conversation_id: rec.id.clone(),
            item_ids: items.iter().map(|i| i.id.clone()).collect(),
        },
        rec.owner.clone(),
    ))
}
