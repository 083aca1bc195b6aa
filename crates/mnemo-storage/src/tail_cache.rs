//! An in-memory cache of conversation tails: the record and the newest items of recently
//! written or read conversations, so that loading a conversation's history (and the record
//! read by every append) does not walk the LSM tree.
//!
//! It is a [`WriteThrough`] cache keyed by conversation, and follows its consistency rules:
//! every write of a conversation calls [`TailCache::begin`] under the conversation's lock,
//! right before it hands its batch to the engine, and finishes with the [`TailChange`] it made
//! once durable; a hit needs no write in flight; fills after a miss are discarded if a write
//! intervened or a failed write has not been settled.
//!
//! A tail holds every existing item with sequence number ≥ `from` (`from` = 1: the whole
//! conversation), at most [`MAX_TAIL_ITEMS`] of them.

use crate::records::{ConversationRecord, StoredItem};
use crate::write_through::{self, Change, Entry, Miss, Write, WriteThrough};
use std::collections::VecDeque;
use std::sync::Arc;

/// Most items kept per conversation (a listing of up to `MAX_TAIL_ITEMS - 1` items, plus the
/// one that tells whether more follow, can be served from the cache).
pub const MAX_TAIL_ITEMS: usize = 128;
/// Bytes counted for a tail besides its items' payloads.
const TAIL_OVERHEAD: usize = 256;
const ITEM_OVERHEAD: usize = 96;

/// What a finished write did to a conversation.
#[derive(Debug)]
pub(crate) enum TailChange {
    /// The conversation was created with these items (its whole content).
    Created(ConversationRecord, Vec<StoredItem>),
    /// Items were appended; the record after the append.
    Appended(ConversationRecord, Vec<StoredItem>),
    /// The record changed (metadata).
    Updated(ConversationRecord),
    /// One item was deleted.
    ItemDeleted(u64),
    /// One existing item's record was rewritten (same sequence number) with derived data
    /// only (a built-in vector). Applied without waiting for durability, so finishing it does
    /// not settle earlier failed writes (rule 4 of [`write_through`]).
    ItemReplaced(StoredItem),
    /// The conversation was deleted.
    Deleted,
}

pub(crate) struct Tail {
    rec: Arc<ConversationRecord>,
    /// Ascending by sequence number: every existing item with `seq >= from`. Shared with the
    /// pages served from it, so a page is pointer copies.
    items: VecDeque<Arc<StoredItem>>,
    from: u64,
    bytes: usize,
}

fn item_bytes(i: &StoredItem) -> usize {
    ITEM_OVERHEAD
        + i.id.len()
        + i.json.len()
        + i.parent.as_ref().map_or(0, String::len)
        + i.vector.as_ref().map_or(0, |v| v.len() * 4)
}

impl Tail {
    fn new(
        rec: ConversationRecord,
        items: impl IntoIterator<Item = Arc<StoredItem>>,
        from: u64,
    ) -> Tail {
        let mut t = Tail {
            rec: Arc::new(rec),
            items: VecDeque::new(),
            from,
            bytes: TAIL_OVERHEAD,
        };
        t.push(items);
        t
    }

    fn push(&mut self, items: impl IntoIterator<Item = Arc<StoredItem>>) {
        for i in items {
            self.bytes += item_bytes(&i);
            self.items.push_back(i);
        }
        while self.items.len() > MAX_TAIL_ITEMS {
            if let Some(old) = self.items.pop_front() {
                self.bytes -= item_bytes(&old);
                self.from = old.seq + 1;
            }
        }
    }
}

impl Entry for Tail {
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Change<Tail> for TailChange {
    fn apply(self, tail: &mut Option<Tail>) {
        match self {
            TailChange::Created(rec, items) => {
                *tail = Some(Tail::new(rec, items.into_iter().map(Arc::new), 1))
            }
            TailChange::Appended(rec, items) => match tail {
                Some(t) => {
                    t.rec = Arc::new(rec);
                    t.push(items.into_iter().map(Arc::new));
                }
                // Nothing cached: the appended items are every item from the first of them on.
                None => {
                    if let Some(first) = items.first().map(|i| i.seq) {
                        *tail = Some(Tail::new(rec, items.into_iter().map(Arc::new), first));
                    }
                }
            },
            TailChange::Updated(rec) => {
                if let Some(t) = tail {
                    t.rec = Arc::new(rec);
                }
            }
            TailChange::ItemDeleted(seq) => {
                if let Some(t) = tail {
                    if let Some(pos) = t.items.iter().position(|i| i.seq == seq) {
                        if let Some(old) = t.items.remove(pos) {
                            t.bytes -= item_bytes(&old);
                        }
                    }
                }
            }
            TailChange::ItemReplaced(item) => {
                if let Some(t) = tail {
                    if let Some(old) = t.items.iter_mut().find(|i| i.seq == item.seq) {
                        t.bytes = t.bytes - item_bytes(old) + item_bytes(&item);
                        *old = Arc::new(item);
                    }
                }
            }
            TailChange::Deleted => *tail = None,
        }
    }

    fn settles(&self) -> bool {
        !matches!(self, TailChange::ItemReplaced(_))
    }
}

/// A newest-first or oldest-first page served from the cache.
pub(crate) struct CachedPage {
    pub rec: Arc<ConversationRecord>,
    pub items: Vec<Arc<StoredItem>>,
    pub has_more: bool,
}

/// A write registered with [`TailCache::begin`].
pub(crate) type TailWrite<'a> = Write<'a, Tail, TailChange>;

/// The cache (see the module documentation).
pub(crate) struct TailCache(WriteThrough<Tail, TailChange>);

impl TailCache {
    /// A cache of at most about `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> TailCache {
        TailCache(WriteThrough::new(budget_bytes))
    }

    /// The conversation's record, if cached and quiescent.
    pub fn record(&self, tenant: &str, id: &str) -> Result<ConversationRecord, Miss> {
        self.0
            .read(&write_through::key(tenant, id), |t| Some((*t.rec).clone()))
    }

    /// The item `item_id` and its conversation's owner, if the cached tail holds it and the
    /// conversation is quiescent.
    pub fn item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> Result<(Option<String>, StoredItem), Miss> {
        self.0.read(&write_through::key(tenant, id), |t| {
            // Newest first: the search indexer asks for items just appended.
            let item = t.items.iter().rev().find(|i| i.id == item_id)?;
            Some((t.rec.owner.clone(), (**item).clone()))
        })
    }

    /// The first page of items (`newest_first` or oldest first), if the cache can answer it.
    pub fn page(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
        newest_first: bool,
    ) -> Result<CachedPage, Miss> {
        self.0.read(&write_through::key(tenant, id), |t| {
            let n = t.items.len();
            let complete = t.from <= 1;
            let items: Vec<Arc<StoredItem>> = if newest_first {
                if n <= limit && !complete {
                    return None;
                }
                t.items.iter().rev().take(limit).cloned().collect()
            } else {
                if !complete {
                    return None;
                }
                t.items.iter().take(limit).cloned().collect()
            };
            Some(CachedPage {
                rec: t.rec.clone(),
                items,
                has_more: n > limit,
            })
        })
    }

    /// Fills the cache after a miss with what was read from the store: the record and the
    /// newest existing items in ascending order (`complete`: they are all the conversation's
    /// items). Ignored if any write began or finished in the shard since `miss`.
    pub fn fill(
        &self,
        miss: Miss,
        tenant: &str,
        rec: &ConversationRecord,
        items: Vec<Arc<StoredItem>>,
        complete: bool,
    ) {
        let from = if complete {
            1
        } else {
            match items.first() {
                Some(i) => i.seq,
                None => return,
            }
        };
        let tail = Tail::new(rec.clone(), items, from);
        // Same state (no write since the miss): keep whichever tail reaches further back.
        self.0
            .fill(miss, write_through::key(tenant, &rec.id), tail, |t| {
                t.from <= from
            });
    }

    /// Registers a write of a conversation about to be handed to the engine. Call under the
    /// conversation's lock.
    pub fn begin(&self, tenant: &str, id: &str) -> TailWrite<'_> {
        self.0.begin(write_through::key(tenant, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(id: &str, last_seq: u64) -> ConversationRecord {
        ConversationRecord {
            id: id.into(),
            created_at: 0,
            metadata: Default::default(),
            owner: None,
            last_seq,
            last_item: None,
            updated_ms: None,
        }
    }

    fn shared(items: Vec<StoredItem>) -> Vec<Arc<StoredItem>> {
        items.into_iter().map(Arc::new).collect()
    }

    fn items(from: u64, to: u64) -> Vec<StoredItem> {
        (from..=to)
            .map(|s| StoredItem {
                id: format!("msg_{s}"),
                seq: s,
                created_at_ms: 0,
                parent: None,
                json: Bytes::from(format!("{{\"id\":\"msg_{s}\"}}")),
                vector: None,
                vector_builtin: false,
            })
            .collect()
    }

    fn seqs(p: &CachedPage) -> Vec<u64> {
        p.items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn writes_apply_in_begin_order_and_reads_wait_for_the_queue() {
        let c = TailCache::new(1 << 30);
        c.begin("t", "c")
            .finish(TailChange::Created(rec("c", 2), items(1, 2)));
        let a = c.begin("t", "c");
        let b = c.begin("t", "c");
        // In flight: no hit.
        assert!(c.page("t", "c", 10, true).is_err());
        b.finish(TailChange::Appended(rec("c", 4), items(4, 4)));
        assert!(c.page("t", "c", 10, true).is_err(), "a is still in flight");
        a.finish(TailChange::Appended(rec("c", 3), items(3, 3)));
        let p = c.page("t", "c", 10, true).ok().unwrap();
        assert_eq!(seqs(&p), vec![4, 3, 2, 1]);
        assert_eq!(p.rec.last_seq, 4, "the record of the last write wins");
        assert!(!p.has_more);
    }

    #[test]
    fn a_failed_write_drops_the_tail_until_the_queue_drains() {
        let c = TailCache::new(1 << 30);
        c.begin("t", "c")
            .finish(TailChange::Created(rec("c", 2), items(1, 2)));
        let a = c.begin("t", "c");
        let b = c.begin("t", "c");
        drop(a);
        b.finish(TailChange::Appended(rec("c", 4), items(4, 4)));
        assert!(c.page("t", "c", 10, true).is_err());
        assert!(c.record("t", "c").is_err());
    }

    #[test]
    fn fills_are_discarded_when_a_write_intervened() {
        let c = TailCache::new(1 << 30);
        let miss = c.page("t", "c", 10, true).err().unwrap();
        c.begin("t", "other").finish(TailChange::Deleted);
        c.fill(miss, "t", &rec("c", 2), shared(items(1, 2)), true);
        // Either shard: a write in the same shard discards it, another shard keeps it.
        let miss = c.page("t", "c", 10, true).err();
        if let Some(m) = miss {
            c.fill(m, "t", &rec("c", 2), shared(items(1, 2)), true);
        }
        let p = c.page("t", "c", 10, true).ok().unwrap();
        assert_eq!(seqs(&p), vec![2, 1]);
        let m = c.record("t", "d").err().unwrap();
        let w = c.begin("t", "d");
        c.fill(m, "t", &rec("d", 1), shared(items(1, 1)), true);
        assert!(
            c.record("t", "d").is_err(),
            "fill during a write must be ignored"
        );
        drop(w);
    }

    #[test]
    fn a_failed_write_refuses_fills_until_a_later_write_is_durable() {
        let c = TailCache::new(1 << 30);
        drop(c.begin("t", "a"));
        let m = c.record("t", "c").err().unwrap();
        c.fill(m, "t", &rec("c", 1), shared(items(1, 1)), true);
        assert!(c.record("t", "c").is_err(), "unsettled: fill refused");
        c.begin("t", "b").finish(TailChange::Updated(rec("b", 0)));
        let m = c.record("t", "c").err().unwrap();
        c.fill(m, "t", &rec("c", 1), shared(items(1, 1)), true);
        assert!(
            c.record("t", "c").is_ok(),
            "settled by a later durable write"
        );
    }

    #[test]
    fn replaced_items_update_the_tail_but_settle_nothing() {
        let c = TailCache::new(1 << 30);
        c.begin("t", "c")
            .finish(TailChange::Created(rec("c", 2), items(1, 2)));
        let mut with_vector = items(2, 2).remove(0);
        with_vector.vector = Some(vec![1.0, 2.0]);
        with_vector.vector_builtin = true;
        c.begin("t", "c")
            .finish(TailChange::ItemReplaced(with_vector.clone()));
        let p = c.page("t", "c", 2, true).ok().unwrap();
        assert_eq!(seqs(&p), vec![2, 1]);
        assert_eq!(p.items[0].vector, with_vector.vector);
        assert!(p.items[0].vector_builtin);
        assert_eq!(p.items[1].vector, None);
        // After a failed write, a replacement (not durable when applied) does not settle.
        drop(c.begin("t", "a"));
        c.begin("t", "c")
            .finish(TailChange::ItemReplaced(with_vector));
        let m = c.record("t", "d").err().unwrap();
        c.fill(m, "t", &rec("d", 1), shared(items(1, 1)), true);
        assert!(c.record("t", "d").is_err(), "still unsettled");
    }

    #[test]
    fn items_are_found_by_id_in_quiescent_tails() {
        let c = TailCache::new(1 << 30);
        let mut r = rec("c", 3);
        r.owner = Some("u".into());
        c.begin("t", "c")
            .finish(TailChange::Created(r, items(1, 3)));
        let (owner, item) = c.item("t", "c", "msg_2").ok().unwrap();
        assert_eq!((owner.as_deref(), item.seq), (Some("u"), 2));
        assert!(c.item("t", "c", "msg_9").is_err(), "not in the tail");
        let w = c.begin("t", "c");
        assert!(c.item("t", "c", "msg_2").is_err(), "write in flight");
        w.finish(TailChange::ItemDeleted(2));
        assert!(c.item("t", "c", "msg_2").is_err(), "deleted");
        assert!(c.item("t", "c", "msg_3").is_ok());
    }

    #[test]
    fn partial_tails_answer_only_what_they_hold() {
        let c = TailCache::new(1 << 30);
        // Nothing cached, then an append: the tail holds items 11.. only.
        c.begin("t", "c")
            .finish(TailChange::Appended(rec("c", 12), items(11, 12)));
        assert!(
            c.page("t", "c", 2, true).is_err(),
            "cannot tell if more follow"
        );
        let p = c.page("t", "c", 1, true).ok().unwrap();
        assert_eq!(seqs(&p), vec![12]);
        assert!(p.has_more);
        assert!(
            c.page("t", "c", 1, false).is_err(),
            "oldest first needs the start"
        );
        c.begin("t", "c").finish(TailChange::ItemDeleted(12));
        assert!(c.page("t", "c", 1, true).is_err());
    }

    #[test]
    fn tails_are_capped_and_evicted() {
        let c = TailCache::new(64 * 8 * 1024);
        c.begin("t", "c")
            .finish(TailChange::Created(rec("c", 300), items(1, 300)));
        // 128 items of ~110 bytes exceed a shard's 8 KiB budget: evicted.
        assert!(c.record("t", "c").is_err());
        let c = TailCache::new(1 << 30);
        c.begin("t", "c")
            .finish(TailChange::Created(rec("c", 300), items(1, 300)));
        let p = c.page("t", "c", 50, true).ok().unwrap();
        assert_eq!(p.items[0].seq, 300);
        assert!(c.page("t", "c", 200, true).is_err());
        assert!(c.page("t", "c", 10, false).is_err());
    }
}
