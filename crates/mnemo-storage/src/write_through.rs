//! A write-through cache of durable state, shared by the cache of conversation tails
//! ([`crate::tail_cache`]) and the cache of key-value memory ([`crate::kv_cache`]).
//!
//! Each cached entry belongs to one key (a conversation, a memory key). Writes of a key go
//! through the cache; reads that miss fill it from the store.
//!
//! # Consistency
//!
//! The cache only ever holds durable state, and a hit returns exactly what a read of the
//! store would return at that moment. Four rules keep it so:
//!
//! 1. **Writes go through it in staging order.** Every write of a key calls
//!    [`WriteThrough::begin`] under the key's lock, right before it hands its batch to the
//!    engine, and [`Write::finish`] once the batch is durable. Finished writes are applied
//!    strictly in the order they began (a per-key queue), which is also the order in which the
//!    write-ahead log makes them durable. A write that fails, or whose future is dropped before
//!    it finishes, may or may not become durable: it drops the entry and the key is re-read
//!    from the store once its queue is empty.
//! 2. **Reads never use a key with writes in flight.** A hit needs an empty queue, so a reader
//!    never sees an acknowledged-looking state that the store would not show.
//! 3. **Fills from the store are discarded if anything may have changed meanwhile.** A reader
//!    that missed notes its shard's write generation before reading the store and may fill
//!    the cache only if no write began or finished in that shard since.
//! 4. **A failed write unsettles the cache.** A write whose durability wait failed (an
//!    object-store outage, say) may still become durable later, unseen by the cache. Until a
//!    write that began after the failure has become durable — which, the write-ahead log being
//!    durable in order, settles the fate of every earlier write — fills are refused.
//!
//! Shards evict the least recently used quiescent entries when over budget.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// A cached entry.
pub(crate) trait Entry {
    /// Bytes counted against the budget.
    fn bytes(&self) -> usize;
}

/// What a finished write did to a key.
pub(crate) trait Change<E>: Sized {
    /// Applies the change to the key's entry (`None`: nothing cached), in staging order.
    fn apply(self, entry: &mut Option<E>);
    /// False for a change applied before it was durable: finishing it proves nothing about
    /// earlier writes (rule 4).
    fn settles(&self) -> bool {
        true
    }
}

/// Writes begun and not yet applied, in begin order: `Some` once finished (`Some(None)`:
/// failed).
type Queue<C> = VecDeque<(u64, Option<Option<C>>)>;

struct Slot<E, C> {
    queue: Queue<C>,
    entry: Option<E>,
    /// A write in the queue failed: nothing is applied until the queue drains.
    poisoned: bool,
    used: u64,
}

impl<E, C> Default for Slot<E, C> {
    fn default() -> Self {
        Slot {
            queue: VecDeque::new(),
            entry: None,
            poisoned: false,
            used: 0,
        }
    }
}

struct Shard<E, C> {
    slots: HashMap<String, Slot<E, C>>,
    /// Bumped whenever a write begins or finishes in this shard.
    generation: u64,
    next_ticket: u64,
    bytes: usize,
    clock: u64,
}

impl<E, C> Default for Shard<E, C> {
    fn default() -> Self {
        Shard {
            slots: HashMap::new(),
            generation: 0,
            next_ticket: 0,
            bytes: 0,
            clock: 0,
        }
    }
}

/// A miss: the shard generation to hand back to [`WriteThrough::fill`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Miss(u64);

/// The cache (see the module documentation).
pub(crate) struct WriteThrough<E, C> {
    shards: Vec<Mutex<Shard<E, C>>>,
    shard_budget: usize,
    /// Writes begun so far (all keys).
    writes: AtomicU64,
    /// 0, or the value of `writes` when a write failed (see rule 4).
    unsettled_at: AtomicU64,
}

fn entry_bytes<E: Entry>(e: &Option<E>) -> usize {
    e.as_ref().map_or(0, Entry::bytes)
}

impl<E: Entry, C: Change<E>> WriteThrough<E, C> {
    /// A cache of at most about `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        WriteThrough {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget_bytes / SHARDS,
            writes: AtomicU64::new(0),
            unsettled_at: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        self.shard_budget > 0
    }

    fn shard(&self, k: &str) -> MutexGuard<'_, Shard<E, C>> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in k.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Answers from the key's entry if it is cached, no write of the key is in flight and
    /// `read` can answer (returns `Some`); a [`Miss`] otherwise.
    pub fn read<R>(&self, k: &str, read: impl FnOnce(&E) -> Option<R>) -> Result<R, Miss> {
        let mut sh = self.shard(k);
        let miss = Miss(sh.generation);
        sh.clock += 1;
        let clock = sh.clock;
        let Some(slot) = sh.slots.get_mut(k) else {
            return Err(miss);
        };
        if !slot.queue.is_empty() {
            return Err(miss);
        }
        let answer = slot.entry.as_ref().and_then(read).ok_or(miss)?;
        slot.used = clock;
        Ok(answer)
    }

    /// Fills the cache after a miss with what was read from the store. Ignored if any write
    /// began or finished in the shard since `miss`; an entry already cached (filled by another
    /// reader since the miss, so the same state) is kept if `keep` says so.
    pub fn fill(&self, miss: Miss, k: String, entry: E, keep: impl FnOnce(&E) -> bool) {
        if !self.enabled() || self.unsettled_at.load(Ordering::SeqCst) != 0 {
            return;
        }
        let mut sh = self.shard(&k);
        if sh.generation != miss.0 {
            return;
        }
        sh.clock += 1;
        let clock = sh.clock;
        let slot = sh.slots.entry(k).or_default();
        slot.used = clock;
        if slot.entry.as_ref().is_some_and(keep) {
            return;
        }
        let added = entry.bytes();
        let old = entry_bytes(&slot.entry.replace(entry));
        sh.bytes = (sh.bytes + added).saturating_sub(old);
        self.evict(&mut sh);
    }

    /// Registers a write of key `k` about to be handed to the engine. Call under the key's
    /// lock.
    pub fn begin(&self, k: String) -> Write<'_, E, C> {
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
        Write {
            cache: self,
            key: k,
            ticket,
            order,
            done: false,
        }
    }

    fn finish(&self, k: &str, ticket: u64, order: u64, change: Option<C>) {
        match &change {
            None => {
                let now = self.writes.load(Ordering::SeqCst);
                let _ = self.unsettled_at.fetch_max(now, Ordering::SeqCst);
            }
            Some(c) if !c.settles() => {}
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
                let before = entry_bytes(&slot.entry) as isize;
                match change {
                    None => {
                        slot.poisoned = true;
                        slot.entry = None;
                    }
                    Some(_) if slot.poisoned || !enabled => {}
                    Some(c) => c.apply(&mut slot.entry),
                }
                delta += entry_bytes(&slot.entry) as isize - before;
            }
            if slot.queue.is_empty() {
                slot.poisoned = false;
            }
            slot.queue.is_empty() && slot.entry.is_none()
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

    /// Drops least recently used quiescent entries until the shard is at 90% of its budget.
    fn evict(&self, sh: &mut Shard<E, C>) {
        if sh.bytes <= self.shard_budget {
            return;
        }
        let mut idle: Vec<(u64, String)> = sh
            .slots
            .iter()
            .filter(|(_, s)| s.queue.is_empty() && s.entry.is_some())
            .map(|(k, s)| (s.used, k.clone()))
            .collect();
        idle.sort_unstable();
        let target = self.shard_budget / 10 * 9;
        for (_, k) in idle {
            if sh.bytes <= target {
                break;
            }
            if let Some(slot) = sh.slots.remove(&k) {
                sh.bytes -= entry_bytes(&slot.entry).min(sh.bytes);
            }
        }
    }
}

/// A write registered with [`WriteThrough::begin`]. Dropping it without [`Write::finish`]
/// counts as a failed write.
pub(crate) struct Write<'a, E: Entry, C: Change<E>> {
    cache: &'a WriteThrough<E, C>,
    key: String,
    ticket: u64,
    /// Position among all writes begun (for rule 4).
    order: u64,
    done: bool,
}

impl<E: Entry, C: Change<E>> Write<'_, E, C> {
    /// The write is durable and did `change`.
    pub fn finish(mut self, change: C) {
        self.done = true;
        self.cache
            .finish(&self.key, self.ticket, self.order, Some(change));
    }
}

impl<E: Entry, C: Change<E>> Drop for Write<'_, E, C> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.finish(&self.key, self.ticket, self.order, None);
        }
    }
}

/// The cache key of `name` in `tenant` (a tenant id holds no NUL byte).
pub(crate) fn key(tenant: &str, name: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + name.len() + 1);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(name);
    k
}
