//! The in-memory document table and vector blocks: the source of truth for which documents are
//! live, their filterable attributes, and their f32 vectors laid out contiguously per
//! (tenant, source, owner).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use crate::ann::Ann;
use crate::simd::{self, dot};
use crate::types::{Doc, Filter, Source};

/// Internal document handle: unique per document version, never reused.
pub(crate) type Handle = u64;

/// A live document's attributes (the text lives in tantivy, the vector in its block).
#[derive(Debug)]
pub(crate) struct DocEntry {
    pub tenant: Arc<str>,
    pub source: Source,
    pub id: Box<str>,
    pub owner: Option<Arc<str>>,
    pub conversation_id: Option<Arc<str>>,
    pub role: Option<Box<str>>,
    pub created_at: i64,
    pub metadata: BTreeMap<String, String>,
    /// Slot in the owner's block when the document has a vector.
    pub slot: Option<u32>,
    /// [`crate::text_hash`] of the indexed text: identifies the version a derived vector was
    /// computed from.
    pub text_hash: u64,
    /// The vector was attached by [`crate::IndexOp::SetVector`] (derived from the text), not
    /// given with the document.
    pub derived: bool,
    /// [`Doc::expires_at_ms`].
    pub expires_at_ms: Option<i64>,
}

/// One owner's vectors in one source: `data[slot*dim..(slot+1)*dim]` belongs to
/// `handles[slot]`. Deletes swap the last slot into the hole. `half` is the same vectors
/// rounded to f16 (on CPUs with F16C), scanned first to find the few candidates worth an exact
/// f32 score.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub data: Vec<f32>,
    pub half: Vec<u16>,
    pub handles: Vec<Handle>,
}

/// Blocks smaller than this are scanned in f32 only.
const PRESCAN_MIN: usize = 256;

/// Vectors of one (tenant, source).
#[derive(Default)]
pub(crate) struct SourceVectors {
    pub blocks: HashMap<Option<Arc<str>>, Block>,
    /// Live vectors in all blocks.
    pub count: usize,
    /// ANN index, created once `count` exceeds the threshold.
    pub ann: Option<Arc<Ann>>,
    /// Vectors not yet added to `ann` (searched exactly meanwhile).
    pub pending: HashSet<Handle>,
    /// A fresh graph being filled in the background because `ann` holds too many removed
    /// nodes ([`Ann::needs_rebuild`]); `ann` keeps serving searches until `next_pending` is
    /// empty, then `next` replaces it.
    pub next: Option<Arc<Ann>>,
    /// Live vectors not yet added to `next`.
    pub next_pending: HashSet<Handle>,
}

impl SourceVectors {
    /// Every live vector (`dim` floats each), block by block.
    pub fn vectors(&self, dim: usize) -> impl Iterator<Item = &[f32]> {
        self.blocks
            .values()
            .flat_map(move |b| b.data.chunks_exact(dim.max(1)))
    }

    /// Every live vector's handle.
    pub fn all_handles(&self) -> HashSet<Handle> {
        self.blocks
            .values()
            .flat_map(|b| b.handles.iter().copied())
            .collect()
    }

    /// Records a new live vector: pending for the graph and for its replacement, if any.
    /// Returns whether a graph has new work.
    fn add_pending(&mut self, handle: Handle) -> bool {
        if self.next.is_some() {
            self.next_pending.insert(handle);
        }
        if self.ann.is_some() {
            self.pending.insert(handle);
            return true;
        }
        false
    }

    /// Forgets a vector in the graph and its replacement.
    fn remove_from_graphs(&mut self, handle: Handle) {
        if !self.pending.remove(&handle) {
            if let Some(ann) = &self.ann {
                ann.remove(handle);
            }
        }
        if !self.next_pending.remove(&handle) {
            if let Some(next) = &self.next {
                next.remove(handle);
            }
        }
    }
}

/// Everything the catalog knows about one tenant.
#[derive(Default)]
pub(crate) struct TenantState {
    pub dim: Option<usize>,
    pub sources: [SourceVectors; 2],
    pub by_id: [HashMap<Box<str>, Handle>; 2],
    pub by_conversation: HashMap<Arc<str>, HashSet<Handle>>,
    pub by_owner: HashMap<Arc<str>, HashSet<Handle>>,
    pub docs: usize,
}

/// The document table for all tenants.
#[derive(Default)]
pub(crate) struct Catalog {
    pub docs: HashMap<Handle, DocEntry>,
    pub tenants: HashMap<Arc<str>, TenantState>,
    /// Handle of the next document version.
    pub next_handle: Handle,
    /// Live documents with an expiry, by expiry time (unix ms).
    pub expiries: BTreeMap<i64, Vec<Handle>>,
}

/// What the full-text index must do after a catalog change.
#[derive(Default)]
pub(crate) struct TextChanges {
    pub deletes: Vec<Handle>,
    pub adds: Vec<(Handle, Doc)>,
}

/// Scope plus filters of a query, evaluated against catalog entries.
pub(crate) struct Matcher<'q> {
    pub tenant: &'q str,
    pub source: Source,
    pub owner: Option<&'q str>,
    pub conversation_id: Option<&'q str>,
    pub key_prefix: Option<&'q str>,
    pub filter: &'q Filter,
}

impl Matcher<'_> {
    /// True when only tenant, source and owner matter (which blocks already guarantee).
    pub fn trivial_within_block(&self) -> bool {
        self.conversation_id.is_none() && self.key_prefix.is_none() && self.filter.is_empty()
    }

    pub fn matches(&self, d: &DocEntry) -> bool {
        if &*d.tenant != self.tenant || d.source != self.source {
            return false;
        }
        if let Some(o) = self.owner {
            if d.owner.as_deref() != Some(o) {
                return false;
            }
        }
        if let Some(c) = self.conversation_id {
            if d.conversation_id.as_deref() != Some(c) {
                return false;
            }
        }
        if let Some(p) = self.key_prefix {
            if !d.id.starts_with(p) {
                return false;
            }
        }
        let f = self.filter;
        if let Some(r) = &f.role {
            if d.role.as_deref() != Some(r.as_str()) {
                return false;
            }
        }
        if f.created_after.is_some_and(|a| d.created_at < a) {
            return false;
        }
        if f.created_before.is_some_and(|b| d.created_at >= b) {
            return false;
        }
        f.metadata
            .iter()
            .all(|(k, v)| d.metadata.get(k).is_some_and(|dv| dv == v))
    }
}

#[derive(Clone, Copy, Debug)]
struct Scored {
    score: f32,
    handle: Handle,
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    /// "Greater" means worse, so a max-heap keeps the worst kept hit on top.
    fn cmp(&self, o: &Self) -> Ordering {
        o.score
            .total_cmp(&self.score)
            .then(self.handle.cmp(&o.handle))
    }
}

/// Keeps the `k` best (score, handle) pairs; ties go to the smaller handle (older document).
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, score: f32, handle: Handle) {
        let s = Scored { score, handle };
        if self.heap.len() < self.k {
            self.heap.push(s);
        } else if let Some(worst) = self.heap.peek() {
            if s < *worst {
                self.heap.pop();
                self.heap.push(s);
            }
        }
    }

    /// How many hits are kept.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(Handle, f32)> {
        let mut v = self.heap.into_vec();
        v.sort();
        v.into_iter().map(|s| (s.handle, s.score)).collect()
    }
}

impl Catalog {
    pub fn tenant(&self, tenant: &str) -> Option<&TenantState> {
        self.tenants.get(tenant)
    }

    /// The f32 (normalised) vector of a live document.
    pub fn vector(&self, handle: Handle) -> Option<&[f32]> {
        let d = self.docs.get(&handle)?;
        let slot = d.slot? as usize;
        let ts = self.tenants.get(&*d.tenant)?;
        let dim = ts.dim?;
        let block = ts.sources[d.source.index()].blocks.get(&d.owner)?;
        block.data.get(slot * dim..(slot + 1) * dim)
    }

    /// Like [`Catalog::vector`] for a document known to belong to `sv` (dimension `dim`): one
    /// lookup fewer on the re-scoring path of ANN searches.
    pub fn vector_in<'a>(
        &self,
        sv: &'a SourceVectors,
        dim: usize,
        handle: Handle,
    ) -> Option<&'a [f32]> {
        let d = self.docs.get(&handle)?;
        let slot = d.slot? as usize;
        sv.blocks
            .get(&d.owner)?
            .data
            .get(slot * dim..(slot + 1) * dim)
    }

    /// The live document `id` of a tenant and source.
    pub fn live(&self, tenant: &str, source: Source, id: &str) -> Option<Handle> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.by_id[source.index()].get(id).copied())
    }

    /// Inserts or replaces `doc` (its vector already validated and normalised).
    /// With `keep_derived`, a document without a vector keeps the derived vector of the
    /// version it replaces when both have the same text.
    /// Returns the sources whose ANN index got new pending vectors.
    pub fn upsert(
        &mut self,
        mut doc: Doc,
        keep_derived: bool,
        text: &mut TextChanges,
    ) -> Option<(Arc<str>, Source)> {
        let src = doc.source;
        let text_hash = crate::text_hash(&doc.text);
        let mut derived = false;
        if let Some(old) = self.live(&doc.tenant, src, &doc.id) {
            if keep_derived && doc.vector.is_none() {
                let same = self
                    .docs
                    .get(&old)
                    .is_some_and(|d| d.derived && d.text_hash == text_hash);
                if same {
                    doc.vector = self.vector(old).map(<[f32]>::to_vec);
                    derived = doc.vector.is_some();
                }
            }
            self.remove(old, text);
        }
        let handle = self.next_handle;
        self.next_handle += 1;

        let tenant_key: Arc<str> = match self.tenants.get_key_value(doc.tenant.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(doc.tenant.as_str()),
        };
        let ts = self.tenants.entry(tenant_key.clone()).or_default();
        let owner: Option<Arc<str>> = doc.owner.as_deref().map(|o| {
            ts.by_owner
                .get_key_value(o)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(o))
        });
        let conv: Option<Arc<str>> = doc.conversation_id.as_deref().map(|c| {
            ts.by_conversation
                .get_key_value(c)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(c))
        });

        let mut slot = None;
        let mut ann_dirty = None;
        if let Some(v) = &doc.vector {
            let dim = *ts.dim.get_or_insert(v.len());
            if v.len() == dim {
                let sv = &mut ts.sources[src.index()];
                let block = sv.blocks.entry(owner.clone()).or_default();
                slot = Some(block.handles.len() as u32);
                block.handles.push(handle);
                block.data.extend_from_slice(v);
                if simd::has_f16() {
                    simd::push_f16(v, &mut block.half);
                }
                sv.count += 1;
                if sv.add_pending(handle) {
                    ann_dirty = Some((tenant_key.clone(), src));
                }
            }
        }
        ts.by_id[src.index()].insert(doc.id.as_str().into(), handle);
        if let Some(o) = &owner {
            ts.by_owner.entry(o.clone()).or_default().insert(handle);
        }
        if let Some(c) = &conv {
            ts.by_conversation
                .entry(c.clone())
                .or_default()
                .insert(handle);
        }
        ts.docs += 1;
        self.docs.insert(
            handle,
            DocEntry {
                tenant: tenant_key,
                source: src,
                id: doc.id.as_str().into(),
                owner,
                conversation_id: conv,
                role: doc.role.as_deref().map(Into::into),
                created_at: doc.created_at,
                metadata: doc.metadata.clone(),
                slot,
                text_hash,
                derived: derived && slot.is_some(),
                expires_at_ms: doc.expires_at_ms,
            },
        );
        self.schedule_expiry(handle, doc.expires_at_ms);
        text.adds.push((handle, doc));
        ann_dirty
    }

    /// Whether the live document `id` has no vector and its text hashes to `text_hash`.
    pub fn needs_vector(&self, tenant: &str, source: Source, id: &str, text_hash: u64) -> bool {
        self.live(tenant, source, id)
            .and_then(|h| self.docs.get(&h))
            .is_some_and(|d| d.slot.is_none() && d.text_hash == text_hash)
    }

    /// Attaches a derived vector (validated and normalised) to the live document `id` if it
    /// [needs one](Catalog::needs_vector) for that text; otherwise does nothing. The text
    /// index is not touched. Returns the source whose ANN index got a new pending vector.
    pub fn set_vector(
        &mut self,
        tenant: &str,
        source: Source,
        id: &str,
        text_hash: u64,
        v: &[f32],
    ) -> Option<(Arc<str>, Source)> {
        if !self.needs_vector(tenant, source, id, text_hash) {
            return None;
        }
        let handle = self.live(tenant, source, id)?;
        let tenant_key = self.tenants.get_key_value(tenant)?.0.clone();
        let ts = self.tenants.get_mut(&tenant_key)?;
        let dim = *ts.dim.get_or_insert(v.len());
        if v.len() != dim {
            return None;
        }
        let d = self.docs.get_mut(&handle)?;
        let sv = &mut ts.sources[source.index()];
        let block = sv.blocks.entry(d.owner.clone()).or_default();
        d.slot = Some(block.handles.len() as u32);
        d.derived = true;
        block.handles.push(handle);
        block.data.extend_from_slice(v);
        if simd::has_f16() {
            simd::push_f16(v, &mut block.half);
        }
        sv.count += 1;
        if sv.add_pending(handle) {
            return Some((tenant_key, source));
        }
        None
    }

    /// Removes one live document everywhere (blocks, maps, ANN).
    pub fn remove(&mut self, handle: Handle, text: &mut TextChanges) {
        let Some(d) = self.docs.remove(&handle) else {
            return;
        };
        text.deletes.push(handle);
        if let Some(at) = d.expires_at_ms {
            if let Some(due) = self.expiries.get_mut(&at) {
                due.retain(|&h| h != handle);
                if due.is_empty() {
                    self.expiries.remove(&at);
                }
            }
        }
        let Some(ts) = self.tenants.get_mut(&*d.tenant) else {
            return;
        };
        ts.docs -= 1;
        ts.by_id[d.source.index()].remove(&*d.id);
        if let Some(o) = &d.owner {
            if let Some(set) = ts.by_owner.get_mut(o) {
                set.remove(&handle);
                if set.is_empty() {
                    ts.by_owner.remove(o);
                }
            }
        }
        if let Some(c) = &d.conversation_id {
            if let Some(set) = ts.by_conversation.get_mut(c) {
                set.remove(&handle);
                if set.is_empty() {
                    ts.by_conversation.remove(c);
                }
            }
        }
        let (Some(slot), Some(dim)) = (d.slot, ts.dim) else {
            return;
        };
        let sv = &mut ts.sources[d.source.index()];
        sv.count -= 1;
        sv.remove_from_graphs(handle);
        let Some(block) = sv.blocks.get_mut(&d.owner) else {
            return;
        };
        let slot = slot as usize;
        let last = block.handles.len() - 1;
        if slot != last {
            block
                .data
                .copy_within(last * dim..(last + 1) * dim, slot * dim);
            if !block.half.is_empty() {
                block
                    .half
                    .copy_within(last * dim..(last + 1) * dim, slot * dim);
            }
            let moved = block.handles[last];
            block.handles[slot] = moved;
            if let Some(m) = self.docs.get_mut(&moved) {
                m.slot = Some(slot as u32);
            }
        }
        block.handles.truncate(last);
        block.data.truncate(last * dim);
        block.half.truncate(last * dim);
        if block.handles.is_empty() {
            sv.blocks.remove(&d.owner);
        }
    }

    /// Records that the live document `handle` expires at `at`, if it does.
    pub fn schedule_expiry(&mut self, handle: Handle, at: Option<i64>) {
        if let Some(at) = at {
            self.expiries.entry(at).or_default().push(handle);
        }
    }

    /// Whether some document expires at or before `now_ms`.
    pub fn expiry_due(&self, now_ms: i64) -> bool {
        self.expiries
            .first_key_value()
            .is_some_and(|(&at, _)| at <= now_ms)
    }

    /// Removes every document whose expiry is at or before `now_ms`.
    pub fn remove_expired(&mut self, now_ms: i64, text: &mut TextChanges) {
        while self.expiry_due(now_ms) {
            let Some((_, handles)) = self.expiries.pop_first() else {
                break;
            };
            for h in handles {
                self.remove(h, text);
            }
        }
    }

    /// Removes every handle in `handles`.
    pub fn remove_all(&mut self, handles: Vec<Handle>, text: &mut TextChanges) {
        for h in handles {
            self.remove(h, text);
        }
    }

    /// Handles of a tenant's documents selected by `pick`.
    pub fn handles_of(
        &self,
        tenant: &str,
        pick: impl FnOnce(&TenantState) -> Vec<Handle>,
    ) -> Vec<Handle> {
        self.tenants.get(tenant).map(pick).unwrap_or_default()
    }
}

/// Exact scan of one block into `top`, keeping only handles accepted by `keep` (if any).
///
/// Large blocks are scanned in two passes: f16 scores for every vector (half the memory
/// traffic), then exact f32 scores for those within twice the f16 error bound of the k-th best
/// f16 score. Every vector of the exact top-k is among them (its f16 score is at least
/// `S_k - e >= A_k - 2e`, where `S_k`/`A_k` are the k-th best exact/f16 scores), so the result
/// equals the f32-only scan.
pub(crate) fn scan_block(
    block: &Block,
    dim: usize,
    query: &[f32],
    keep: Option<&dyn Fn(Handle) -> bool>,
    top: &mut TopK,
) {
    let accepted = |h: Handle| keep.is_none_or(|keep| keep(h));
    if block.half.len() != block.data.len() || block.handles.len() < PRESCAN_MIN {
        for (v, &h) in block.data.chunks_exact(dim).zip(&block.handles) {
            if accepted(h) {
                top.push(dot(v, query), h);
            }
        }
        return;
    }
    let mut approx: Vec<(f32, u32)> = Vec::with_capacity(block.handles.len());
    for (slot, (v, &h)) in block.half.chunks_exact(dim).zip(&block.handles).enumerate() {
        if accepted(h) {
            approx.push((simd::dot_f16(v, query), slot as u32));
        }
    }
    let k = top.k();
    let cutoff = if approx.len() > k {
        let (_, kth, _) = approx.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        kth.0 - 2.0 * simd::f16_error_bound(dim)
    } else {
        f32::NEG_INFINITY
    };
    for (a, slot) in approx {
        if a >= cutoff {
            let s = slot as usize;
            top.push(
                dot(&block.data[s * dim..(s + 1) * dim], query),
                block.handles[s],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_documents_wait_for_their_expiry() {
        let mut cat = Catalog::default();
        let mut text = TextChanges::default();
        let doc = |id: &str, at: i64| Doc {
            tenant: "t".into(),
            source: Source::Memory,
            id: id.into(),
            owner: None,
            conversation_id: None,
            role: None,
            created_at: 0,
            metadata: BTreeMap::new(),
            text: "x".into(),
            vector: None,
            expires_at_ms: Some(at),
        };
        // A value rewritten many times with a TTL: only its live version is scheduled.
        for n in 0..100 {
            cat.upsert(doc("k", 1_000 + n), false, &mut text);
        }
        cat.upsert(doc("other", 5_000), false, &mut text);
        let scheduled: usize = cat.expiries.values().map(Vec::len).sum();
        assert_eq!(scheduled, 2);
        assert_eq!(
            cat.expiries.keys().copied().collect::<Vec<_>>(),
            [1_099, 5_000]
        );
        cat.remove_expired(2_000, &mut text);
        assert!(cat.live("t", Source::Memory, "k").is_none());
        assert!(cat.live("t", Source::Memory, "other").is_some());
        assert_eq!(cat.expiries.keys().copied().collect::<Vec<_>>(), [5_000]);
    }

    fn scan_f32(block: &Block, dim: usize, q: &[f32], k: usize) -> Vec<(Handle, f32)> {
        let mut top = TopK::new(k);
        for (v, &h) in block.data.chunks_exact(dim).zip(&block.handles) {
            top.push(dot(v, q), h);
        }
        top.into_sorted()
    }

    #[test]
    fn f16_prescan_equals_f32_scan() {
        if !simd::has_f16() {
            return;
        }
        let dim = 64;
        let mut block = Block::default();
        let mut x = 12345u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        };
        let mut base: Vec<Vec<f32>> = Vec::new();
        for i in 0..3000u64 {
            let v = if i % 10 == 9 {
                // Exact duplicates and near-duplicates make ties and near-ties.
                let mut v = base[(i as usize) / 2].clone();
                v[0] += (i % 3) as f32 * 1e-6;
                v
            } else {
                (0..dim).map(|_| rnd()).collect()
            };
            let v = simd::normalized(&v).unwrap();
            block.data.extend_from_slice(&v);
            simd::push_f16(&v, &mut block.half);
            block.handles.push(i);
            base.push(v);
        }
        for qi in 0..50 {
            let q = simd::normalized(
                &base[qi * 37]
                    .iter()
                    .map(|x| x + rnd() * 0.3)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            for k in [1, 10, 100] {
                let mut top = TopK::new(k);
                scan_block(&block, dim, &q, None, &mut top);
                assert_eq!(
                    top.into_sorted(),
                    scan_f32(&block, dim, &q, k),
                    "query {qi} k {k}"
                );
            }
        }
    }
}
