//! An in-memory cache of conversation tails: the record and the newest items of recently
//! written or read conversations, so that loading a conversation's history (and the record
//! read by every append) does not walk the LSM tree.
//!
//! # Consistency
//!
//! The cache only ever holds durable state, and a hit returns exactly what a read of the
//! store would return at that moment. Three rules keep it so:
//!
//! 1. **Writes go through it in staging order.** Every write of a conversation calls
//!    [`TailCache::begin`] under the conversation's lock, right before it hands its batch to
//!    the engine, and [`TailWrite::finish`] once the batch is durable. Finished writes are
//!    applied strictly in the order they began (a per-conversation queue), which is also the
//!    order in which the write-ahead log makes them durable. A write that fails, or whose
//!    future is dropped before it finishes, may or may not become durable: it drops the tail
//!    and the conversation is re-read from the store once its queue is empty.
//! 2. **Reads never use a conversation with writes in flight.** A hit needs an empty queue, so
//!    a reader never sees an acknowledged-looking state that the store would not show.
//! 3. **Fills from the store are discarded if anything may have changed meanwhile.** A reader
//!    that missed notes its shard's write generation before reading the store and may fill
//!    the cache only if no write began or finished in that shard since.
//! 4. **A failed write unsettles the cache.** A write whose durability wait failed (an
//!    object-store outage, say) may still become durable later, unseen by the cache. Until a
//!    write that began after the failure has become durable — which, the write-ahead log being
//!    durable in order, settles the fate of every earlier write — fills are refused.
//!
//! A tail holds every existing item with sequence number ≥ `from` (`from` = 1: the whole
//! conversation), at most [`MAX_TAIL_ITEMS`] of them. Shards evict the least recently used
//! quiescent tails when over budget.

use crate::records::{ConversationRecord, StoredItem};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Most items kept per conversation (a listing of up to `MAX_TAIL_ITEMS - 1` items, plus the
/// one that tells whether more follow, can be served from the cache).
pub const MAX_TAIL_ITEMS: usize = 128;
const SHARDS: usize = 64;
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
    /// not settle earlier failed writes (rule 4).
    ItemReplaced(StoredItem),
    /// The conversation was deleted.
    Deleted,
}

struct Tail {
    rec: ConversationRecord,
    /// Ascending by sequence number: every existing item with `seq >= from`.
    items: VecDeque<StoredItem>,
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
    fn new(rec: ConversationRecord, items: Vec<StoredItem>, from: u64) -> Tail {
        let mut t = Tail {
            rec,
            items: VecDeque::new(),
            from,
            bytes: TAIL_OVERHEAD,
        };
        t.push(items);
        t
    }

    fn push(&mut self, items: Vec<StoredItem>) {
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

#[derive(Default)]
struct Slot {
    /// Writes begun and not yet applied, in begin order: `Some` once finished.
    queue: VecDeque<(u64, Option<Option<TailChange>>)>,
    tail: Option<Tail>,
    /// A write in the queue failed: nothing is applied until the queue drains.
    poisoned: bool,
    used: u64,
}

#[derive(Default)]
struct Shard {
    slots: HashMap<String, Slot>,
    /// Bumped whenever a write begins or finishes in this shard.
    generation: u64,
    next_ticket: u64,
    bytes: usize,
    clock: u64,
}

/// A miss: the shard generation to hand back to [`TailCache::fill`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Miss(u64);

/// A newest-first or oldest-first page served from the cache.
pub(crate) struct CachedPage {
    pub rec: ConversationRecord,
    pub items: Vec<StoredItem>,
    pub has_more: bool,
}

/// The cache (see the module documentation).
pub(crate) struct TailCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
    /// Writes begun so far (all conversations).
    writes: AtomicU64,
    /// 0, or the value of `writes` when a write failed (see rule 4).
    unsettled_at: AtomicU64,
}

fn key(tenant: &str, id: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + id.len() + 1);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(id);
    k
}

impl TailCache {
    /// A cache of at most about `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> TailCache {
        TailCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget_bytes / SHARDS,
            writes: AtomicU64::new(0),
            unsettled_at: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        self.shard_budget > 0
    }

    fn shard(&self, k: &str) -> MutexGuard<'_, Shard> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in k.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The conversation's record, if cached and quiescent.
    pub fn record(&self, tenant: &str, id: &str) -> Result<ConversationRecord, Miss> {
        let k = key(tenant, id);
        let mut sh = self.shard(&k);
        let miss = Miss(sh.generation);
        sh.clock += 1;
        let clock = sh.clock;
        match sh.slots.get_mut(&k) {
            Some(slot) if slot.queue.is_empty() => match &slot.tail {
                Some(t) => {
                    slot.used = clock;
                    Ok(t.rec.clone())
                }
                None => Err(miss),
            },
            _ => Err(miss),
        }
    }

    /// The first page of items (`newest_first` or oldest first), if the cache can answer it.
    pub fn page(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
        newest_first: bool,
    ) -> Result<CachedPage, Miss> {
        let k = key(tenant, id);
        let mut sh = self.shard(&k);
        let miss = Miss(sh.generation);
        sh.clock += 1;
        let clock = sh.clock;
        let Some(slot) = sh.slots.get_mut(&k) else {
            return Err(miss);
        };
        if !slot.queue.is_empty() {
            return Err(miss);
        }
        let Some(t) = &slot.tail else {
            return Err(miss);
        };
        let n = t.items.len();
        let complete = t.from <= 1;
        let page = if newest_first {
            if n <= limit && !complete {
                return Err(miss);
            }
            CachedPage {
                rec: t.rec.clone(),
                items: t.items.iter().rev().take(limit).cloned().collect(),
                has_more: n > limit,
            }
        } else {
            if !complete {
                return Err(miss);
            }
            CachedPage {
                rec: t.rec.clone(),
                items: t.items.iter().take(limit).cloned().collect(),
                has_more: n > limit,
            }
        };
        slot.used = clock;
        Ok(page)
    }

    /// Fills the cache after a miss with what was read from the store: the record and the
    /// newest existing items in ascending order (`complete`: they are all the conversation's
    /// items). Ignored if any write began or finished in the shard since `miss`.
    pub fn fill(
        &self,
        miss: Miss,
        tenant: &str,
        rec: &ConversationRecord,
        items: Vec<StoredItem>,
        complete: bool,
    ) {
        if !self.enabled() || self.unsettled_at.load(Ordering::SeqCst) != 0 {
            return;
        }
        let k = key(tenant, &rec.id);
        let mut sh = self.shard(&k);
        if sh.generation != miss.0 {
            return;
        }
        let from = if complete {
            1
        } else {
            match items.first() {
                Some(i) => i.seq,
                None => return,
            }
        };
        sh.clock += 1;
        let clock = sh.clock;
        let slot = sh.slots.entry(k).or_default();
        // Same state (no write since the miss): keep whichever tail reaches further back.
        if slot.tail.as_ref().is_some_and(|t| t.from <= from) {
            slot.used = clock;
            return;
        }
        let tail = Tail::new(rec.clone(), items, from);
        let added = tail.bytes;
        let old = slot.tail.replace(tail).map_or(0, |t| t.bytes);
        slot.used = clock;
        sh.bytes = sh.bytes + added - old;
        self.evict(&mut sh);
    }

    /// Registers a write of a conversation about to be handed to the engine. Call under the
    /// conversation's lock.
    pub fn begin<'a>(&'a self, tenant: &str, id: &str) -> TailWrite<'a> {
        let k = key(tenant, id);
        let order = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = {
            let mut sh = self.shard(&k);
            sh.generation += 1;
            sh.next_ticket += 1;
            let ticket = sh.next_ticket;
            sh.slots
                .entry(k.clone())
                .or_default()
                .queue
                .push_back((ticket, None));
            ticket
        };
        TailWrite {
            cache: self,
            key: k,
            ticket,
            order,
            done: false,
        }
    }

    fn finish(&self, k: &str, ticket: u64, order: u64, change: Option<TailChange>) {
        match change {
            None => {
                let now = self.writes.load(Ordering::SeqCst);
                let _ = self.unsettled_at.fetch_max(now, Ordering::SeqCst);
            }
            // A change applied before it is durable proves nothing about earlier writes.
            Some(TailChange::ItemReplaced(_)) => {}
            Some(_) => {
                let at = self.unsettled_at.load(Ordering::SeqCst);
                if at != 0 && order > at {
                    let _ = self.unsettled_at.compare_exchange(
                        at,
                        0,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            }
        }
        let mut sh = self.shard(k);
        sh.generation += 1;
        let enabled = self.enabled();
        let mut delta: isize = 0;
        let remove = {
            let Some(slot) = sh.slots.get_mut(k) else {
                return;
            };
            match slot.queue.iter_mut().find(|(t, _)| *t == ticket) {
                Some(e) => e.1 = Some(change),
                None => return,
            }
            while matches!(slot.queue.front(), Some((_, Some(_)))) {
                let Some((_, Some(change))) = slot.queue.pop_front() else {
                    break;
                };
                let before = slot.tail.as_ref().map_or(0, |t| t.bytes) as isize;
                match change {
                    None => {
                        slot.poisoned = true;
                        slot.tail = None;
                    }
                    Some(_) if slot.poisoned || !enabled => {}
                    Some(c) => apply(slot, c),
                }
                delta += slot.tail.as_ref().map_or(0, |t| t.bytes) as isize - before;
            }
            if slot.queue.is_empty() {
                slot.poisoned = false;
            }
            slot.queue.is_empty() && slot.tail.is_none()
        };
        sh.clock += 1;
        let clock = sh.clock;
        if remove {
            sh.slots.remove(k);
        } else if let Some(slot) = sh.slots.get_mut(k) {
            slot.used = clock;
        }
        sh.bytes = (sh.bytes as isize + delta).max(0) as usize;
        self.evict(&mut sh);
    }

    /// Drops least recently used quiescent tails until the shard is at 90% of its budget.
    fn evict(&self, sh: &mut Shard) {
        if sh.bytes <= self.shard_budget {
            return;
        }
        let mut idle: Vec<(u64, String)> = sh
            .slots
            .iter()
            .filter(|(_, s)| s.queue.is_empty() && s.tail.is_some())
            .map(|(k, s)| (s.used, k.clone()))
            .collect();
        idle.sort_unstable();
        let target = self.shard_budget / 10 * 9;
        for (_, k) in idle {
            if sh.bytes <= target {
                break;
            }
            if let Some(slot) = sh.slots.remove(&k) {
                sh.bytes -= slot.tail.map_or(0, |t| t.bytes).min(sh.bytes);
            }
        }
    }
}

/// Applies one durable change to a conversation's tail (in staging order).
fn apply(slot: &mut Slot, change: TailChange) {
    match change {
        TailChange::Created(rec, items) => slot.tail = Some(Tail::new(rec, items, 1)),
        TailChange::Appended(rec, items) => match &mut slot.tail {
            Some(t) => {
                t.rec = rec;
                t.push(items);
            }
            // Nothing cached: the appended items are every item from the first of them on.
            None => {
                if let Some(first) = items.first().map(|i| i.seq) {
                    slot.tail = Some(Tail::new(rec, items, first));
                }
            }
        },
        TailChange::Updated(rec) => {
            if let Some(t) = &mut slot.tail {
                t.rec = rec;
            }
        }
        TailChange::ItemDeleted(seq) => {
            if let Some(t) = &mut slot.tail {
                if let Some(pos) = t.items.iter().position(|i| i.seq == seq) {
                    if let Some(old) = t.items.remove(pos) {
                        t.bytes -= item_bytes(&old);
                    }
                }
            }
        }
        TailChange::ItemReplaced(item) => {
            if let Some(t) = &mut slot.tail {
                if let Some(old) = t.items.iter_mut().find(|i| i.seq == item.seq) {
                    t.bytes = t.bytes - item_bytes(old) + item_bytes(&item);
                    *old = item;
                }
            }
        }
        TailChange::Deleted => slot.tail = None,
    }
}

/// A write registered with [`TailCache::begin`]. Dropping it without
/// [`TailWrite::finish`] counts as a failed write.
pub(crate) struct TailWrite<'a> {
    cache: &'a TailCache,
    key: String,
    ticket: u64,
    /// Position among all writes begun (for rule 4).
    order: u64,
    done: bool,
}

impl TailWrite<'_> {
    /// The write is durable and did `change`.
    pub fn finish(mut self, change: TailChange) {
        self.done = true;
        self.cache
            .finish(&self.key, self.ticket, self.order, Some(change));
    }
}

impl Drop for TailWrite<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.finish(&self.key, self.ticket, self.order, None);
        }
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
        }
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
        c.fill(miss, "t", &rec("c", 2), items(1, 2), true);
        // Either shard: a write in the same shard discards it, another shard keeps it.
        let miss = c.page("t", "c", 10, true).err();
        if let Some(m) = miss {
            c.fill(m, "t", &rec("c", 2), items(1, 2), true);
        }
        let p = c.page("t", "c", 10, true).ok().unwrap();
        assert_eq!(seqs(&p), vec![2, 1]);
        let m = c.record("t", "d").err().unwrap();
        let w = c.begin("t", "d");
        c.fill(m, "t", &rec("d", 1), items(1, 1), true);
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
        c.fill(m, "t", &rec("c", 1), items(1, 1), true);
        assert!(c.record("t", "c").is_err(), "unsettled: fill refused");
        c.begin("t", "b").finish(TailChange::Updated(rec("b", 0)));
        let m = c.record("t", "c").err().unwrap();
        c.fill(m, "t", &rec("c", 1), items(1, 1), true);
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
        c.fill(m, "t", &rec("d", 1), items(1, 1), true);
        assert!(c.record("t", "d").is_err(), "still unsettled");
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
        let c = TailCache::new(SHARDS * 8 * 1024);
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
