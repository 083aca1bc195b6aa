//! # mnemo-search
//!
//! Search over conversation items and key-value memory, by meaning (vectors), by words
//! (BM25) or both (reciprocal-rank fusion), scoped to a tenant and optionally to an owner,
//! a conversation or a key prefix. Design: `docs/rfcs/0004-search.md`.
//!
//! * **Read-your-writes.** [`SearchIndex::enqueue`] hands operations to an indexer thread and
//!   returns a ticket; the indexer applies everything pending as one group and advances an
//!   `applied` watermark. [`SearchIndex::search`] first waits until every write enqueued
//!   before it started is applied, so an acknowledged write is always visible. The full-text
//!   index is committed lazily: by the first text search that finds uncommitted changes (one
//!   commit serves every search waiting on the writer lock), or in the background about once a
//!   second, never once per batch.
//! * **Vectors** are L2-normalised; the score is cosine similarity. Per-owner and
//!   per-conversation scopes are searched exactly over a contiguous block of f32 vectors.
//!   Tenant-wide scopes larger than [`SearchConfig::ann_threshold`] use a usearch HNSW graph
//!   whose candidates are re-scored exactly.
//! * **Text** is indexed by tantivy (in RAM) with Unicode word tokens, lowercased, and CJK
//!   character bigrams.
//! * **Snapshots.** [`SearchIndex::snapshot`] serialises the whole index (documents, vectors,
//!   ANN graphs, tantivy files) into one checksummed byte string; [`SearchIndex::restore`]
//!   turns it back into an index without re-indexing anything.
//!
//! ```
//! use mnemo_search::{Doc, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};
//!
//! let index = SearchIndex::new(SearchConfig::default())?;
//! index.apply(vec![IndexOp::Upsert(Doc {
//!     tenant: "acme".into(),
//!     source: Source::Items,
//!     id: "item_1".into(),
//!     owner: Some("alice".into()),
//!     conversation_id: Some("conv_1".into()),
//!     role: Some("user".into()),
//!     created_at: 1_700_000_000,
//!     metadata: Default::default(),
//!     text: "I prefer green tea in the morning".into(),
//!     vector: Some(vec![0.1, 0.9, 0.2]),
//!     expires_at_ms: None,
//! })])?;
//!
//! let mut q = SearchQuery::new("acme", Source::Items, Mode::Hybrid, 5);
//! q.owner = Some("alice".into());
//! q.text = Some("tea".into());
//! q.vector = Some(vec![0.1, 0.8, 0.3]);
//! let hits = index.search(&q)?;
//! assert_eq!(hits[0].id, "item_1");
//! # Ok::<(), mnemo_search::SearchError>(())
//! ```

#![warn(missing_docs)]

mod ann;
mod catalog;
mod error;
mod simd;
mod snapshot;
mod text;
mod tokenizer;
mod types;

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

pub use ann::Quantization;
pub use error::SearchError;
pub use simd::dot;
pub use types::{Doc, Filter, Hit, IndexOp, Mode, SearchConfig, SearchQuery, Source, TenantStats};

use catalog::{scan_block, Catalog, Handle, Matcher, TextChanges, TopK};
use text::TextIndex;

/// Constant `k` of reciprocal-rank fusion: `score = Σ 1 / (RRF_K + rank)`, rank from 1.
pub const RRF_K: f32 = 60.0;

/// Each ranking fused by hybrid search contributes at least this many candidates.
const HYBRID_DEPTH: usize = 100;

/// An ANN search for `k` results re-scores exactly the best `k + max(k, ANN_RESCORE_MARGIN)`
/// of the graph's candidates by their quantised score (the walk itself keeps `ef`): on
/// clustered 384-d vectors quantised as [`Quantization::I8`] does, the best 20 held the exact
/// top 10 as often as all 40–64 candidates did.
const ANN_RESCORE_MARGIN: usize = 10;

/// Vectors copied per step when the ANN builder catches up.
const ANN_CHUNK: usize = 1024;

/// Uncommitted full-text changes are committed in the background at most this often (a text
/// search commits them at once).
const BACKGROUND_COMMIT: Duration = Duration::from_secs(1);

/// The search index of one node, for all tenants. `Send + Sync`; share it by reference or
/// `Arc`. Dropping it stops its background threads.
pub struct SearchIndex {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Queue {
    ops: Vec<IndexOp>,
    next_ticket: u64,
}

struct Shared {
    cfg: SearchConfig,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    /// Ticket of the newest enqueued batch.
    enqueued: AtomicU64,
    /// Every batch with a ticket up to this one is visible to searches.
    applied: AtomicU64,
    applied_lock: Mutex<()>,
    applied_cv: Condvar,
    catalog: RwLock<Catalog>,
    text: TextIndex,
    /// The full-text writer. The indexer holds it for a whole batch (catalog and text change
    /// together); a text search takes it only to commit.
    writer: Mutex<TextWriter>,
    /// Batches whose text changes are in the writer. Incremented under the writer lock.
    text_added: AtomicU64,
    /// The value of `text_added` that the reader shows (stored after commit + reload).
    text_visible: AtomicU64,
    /// When the text index was last committed.
    last_commit: Mutex<Instant>,
    /// Vector dimension per tenant, fixed by configuration or by the first vector validated.
    dims: RwLock<HashMap<String, usize>>,
    failure: Mutex<Option<String>>,
    shutdown: AtomicBool,
    ann_ef: AtomicUsize,
    ann_queue: Mutex<VecDeque<(Arc<str>, Source)>>,
    ann_cv: Condvar,
    /// Held by the ANN builder while a chunk goes from `pending` into a graph, and by a
    /// snapshot (so a saved graph never holds a vector still marked pending, or a deleted one
    /// the builder has not removed yet).
    ann_gate: Mutex<()>,
    /// Asks the builder to stop its chunk early (a snapshot waits for the gate).
    ann_yield: AtomicBool,
}

impl SearchIndex {
    /// Creates an empty index and starts its indexer and ANN builder threads.
    pub fn new(cfg: SearchConfig) -> Result<Self, SearchError> {
        let dims = cfg
            .dimension_overrides
            .iter()
            .map(|(t, d)| (t.clone(), *d))
            .collect();
        Self::start(cfg, TextIndex::new()?, Catalog::default(), dims, Vec::new())
    }

    /// Rebuilds an index from a [`SearchIndex::snapshot`], then starts its threads. Vector
    /// blocks, ANN graphs and the text index are loaded as they were, not rebuilt (a graph saved
    /// with another quantisation than `cfg`'s is rebuilt in the background; searches scan the
    /// scope exactly meanwhile). A corrupt, truncated or unknown-version snapshot, or one whose
    /// tenant dimensions contradict `cfg.dimension_overrides`, is
    /// [`SearchError::BadSnapshot`]: rebuild from the source of truth instead.
    pub fn restore(cfg: SearchConfig, bytes: &[u8]) -> Result<Self, SearchError> {
        if cfg.max_top_k == 0 {
            return Err(SearchError::Internal("max_top_k must be at least 1".into()));
        }
        let r = snapshot::decode(bytes, &cfg)?;
        Self::start(cfg, r.text, r.catalog, r.dims, r.ann_todo)
    }

    fn start(
        cfg: SearchConfig,
        text: TextIndex,
        catalog: Catalog,
        dims: HashMap<String, usize>,
        ann_todo: Vec<(Arc<str>, Source)>,
    ) -> Result<Self, SearchError> {
        if cfg.max_top_k == 0 {
            return Err(SearchError::Internal("max_top_k must be at least 1".into()));
        }
        let writer = text.writer(cfg.text_writer_memory)?;
        let writer = Mutex::new(writer);
        let shared = Arc::new(Shared {
            ann_ef: AtomicUsize::new(cfg.ann_expansion_search),
            cfg,
            queue: Mutex::new(Queue {
                ops: Vec::new(),
                next_ticket: 0,
            }),
            queue_cv: Condvar::new(),
            enqueued: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            applied_lock: Mutex::new(()),
            applied_cv: Condvar::new(),
            catalog: RwLock::new(catalog),
            text,
            writer,
            text_added: AtomicU64::new(0),
            text_visible: AtomicU64::new(0),
            last_commit: Mutex::new(Instant::now()),
            dims: RwLock::new(dims),
            failure: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            ann_queue: Mutex::new(ann_todo.into_iter().collect()),
            ann_cv: Condvar::new(),
            ann_gate: Mutex::new(()),
            ann_yield: AtomicBool::new(false),
        });
        let s1 = shared.clone();
        let indexer = std::thread::Builder::new()
            .name("mnemo-search-indexer".into())
            .spawn(move || indexer_loop(&s1))
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        let s2 = shared.clone();
        let builder = std::thread::Builder::new()
            .name("mnemo-search-ann".into())
            .spawn(move || ann_loop(&s2))
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        Ok(SearchIndex {
            shared,
            threads: vec![indexer, builder],
        })
    }

    /// Serialises the whole index as of the last applied batch: documents and their
    /// attributes, f32 vector blocks, ANN graphs and pending sets, tenant dimensions, and the
    /// committed tantivy files, behind a header with a magic, a format version and a CRC-32 of
    /// the body. Batches still queued are not included (call it when the caller's own
    /// [`SearchIndex::apply`] calls have returned, to know what it reflects).
    ///
    /// The indexer pauses while the index is copied (a text commit if one is pending, then a
    /// memory copy of every part); searches keep running, except on an ANN graph while it is
    /// being copied.
    pub fn snapshot(&self) -> Result<Vec<u8>, SearchError> {
        let s = &self.shared;
        if let Some(e) = s.failure.lock().as_ref() {
            return Err(SearchError::Internal(e.clone()));
        }
        let mut e = snapshot::Enc::new();
        {
            // The builder stops after its current insert and hands over the gate.
            s.ann_yield.store(true, Ordering::SeqCst);
            let _gate = s.ann_gate.lock();
            s.ann_yield.store(false, Ordering::SeqCst);
            // The indexer holds the writer for a whole batch: catalog and text agree here.
            let mut w = s.writer.lock();
            commit_text(s, &mut w)?;
            let files = s.text.committed_files()?;
            let dims = s.dims.read().clone();
            let cat = s.catalog.read();
            snapshot::encode(&mut e, &cat, &dims, s.cfg.ann_quantization, &files)?;
        }
        Ok(e.finish())
    }

    /// Tenants that have documents in the index.
    pub fn tenants(&self) -> Vec<String> {
        let cat = self.shared.catalog.read();
        cat.tenants
            .iter()
            .filter(|(_, t)| t.docs > 0)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Validates `vector` for `tenant` (finite, non-zero, right dimension). The first vector
    /// validated for a tenant without a configured dimension fixes the tenant's dimension
    /// (atomically: of two concurrent first writers with different dimensions, one wins and
    /// the other gets [`SearchError::DimensionMismatch`]). Call it before the durable write so
    /// a bad vector never reaches storage.
    pub fn check_vector(&self, tenant: &str, vector: &[f32]) -> Result<(), SearchError> {
        simd::check_finite_nonzero(vector)?;
        if let Some(&d) = self.shared.dims.read().get(tenant) {
            return dim_matches(d, vector.len());
        }
        let mut dims = self.shared.dims.write();
        let d = *dims.entry(tenant.to_string()).or_insert(vector.len());
        dim_matches(d, vector.len())
    }

    /// The tenant's vector dimension, once fixed.
    pub fn dimension(&self, tenant: &str) -> Option<usize> {
        self.shared.dims.read().get(tenant).copied()
    }

    /// Hands `ops` to the indexer and returns a ticket (see [`SearchIndex::wait_for`]).
    /// Cheap and non-blocking. Vectors are validated first (as by
    /// [`SearchIndex::check_vector`]); if any is invalid nothing is enqueued. An empty `ops`
    /// enqueues nothing and returns the newest ticket, so waiting for it waits for every write
    /// enqueued so far.
    pub fn enqueue(&self, mut ops: Vec<IndexOp>) -> Result<u64, SearchError> {
        for op in &ops {
            if let Some((_, v)) = op_vector(op) {
                simd::check_finite_nonzero(v)?;
            }
        }
        for op in &mut ops {
            if let Some((tenant, v)) = op_vector(op) {
                self.check_vector(tenant, v)?;
            }
            match op {
                IndexOp::Upsert(d) | IndexOp::UpsertKeepDerived(d) => {
                    if let Some(v) = &d.vector {
                        d.vector = Some(simd::normalized(v)?);
                    }
                }
                IndexOp::SetVector { vector, .. } => *vector = simd::normalized(vector)?,
                _ => {}
            }
        }
        let s = &self.shared;
        let mut q = s.queue.lock();
        if ops.is_empty() {
            return Ok(q.next_ticket);
        }
        q.ops.append(&mut ops);
        q.next_ticket += 1;
        let ticket = q.next_ticket;
        s.enqueued.store(ticket, Ordering::SeqCst);
        drop(q);
        s.queue_cv.notify_one();
        Ok(ticket)
    }

    /// Waits (up to [`SearchConfig::wait_timeout`]) until the batch with `ticket` and every
    /// earlier one are visible to searches.
    pub fn wait_for(&self, ticket: u64) -> Result<(), SearchError> {
        let s = &self.shared;
        if s.applied.load(Ordering::SeqCst) < ticket {
            let deadline = Instant::now() + s.cfg.wait_timeout;
            let mut g = s.applied_lock.lock();
            while s.applied.load(Ordering::SeqCst) < ticket {
                if s.applied_cv.wait_until(&mut g, deadline).timed_out()
                    && s.applied.load(Ordering::SeqCst) < ticket
                {
                    return Err(SearchError::Timeout);
                }
            }
        }
        match s.failure.lock().as_ref() {
            Some(e) => Err(SearchError::Internal(e.clone())),
            None => Ok(()),
        }
    }

    /// [`SearchIndex::enqueue`] then [`SearchIndex::wait_for`]: on return the operations are
    /// visible to searches.
    pub fn apply(&self, ops: Vec<IndexOp>) -> Result<(), SearchError> {
        let t = self.enqueue(ops)?;
        self.wait_for(t)
    }

    /// Changes the HNSW search breadth (`ef`) of every ANN graph, existing and future: the
    /// recall/speed knob of tenant-wide searches.
    pub fn set_ann_expansion_search(&self, ef: usize) {
        let s = &self.shared;
        s.ann_ef.store(ef, Ordering::SeqCst);
        let cat = s.catalog.read();
        for t in cat.tenants.values() {
            for sv in &t.sources {
                for a in sv.ann.iter().chain(sv.next.iter()) {
                    a.set_expansion_search(ef);
                }
            }
        }
    }

    /// Whether the live document `id` has no vector and its text hashes to `text_hash`
    /// ([`text_hash`]): whether an [`IndexOp::SetVector`] for that text would land. Sees
    /// operations applied so far, not those still queued.
    pub fn needs_vector(&self, tenant: &str, source: Source, id: &str, text_hash: u64) -> bool {
        self.shared
            .catalog
            .read()
            .needs_vector(tenant, source, id, text_hash)
    }

    /// Live documents of `tenant` (all sources).
    pub fn len(&self, tenant: &str) -> usize {
        self.shared
            .catalog
            .read()
            .tenant(tenant)
            .map_or(0, |t| t.docs)
    }

    /// Whether `tenant` has no live document.
    pub fn is_empty(&self, tenant: &str) -> bool {
        self.len(tenant) == 0
    }

    /// Counters of `tenant`.
    pub fn stats(&self, tenant: &str) -> TenantStats {
        let cat = self.shared.catalog.read();
        let Some(t) = cat.tenant(tenant) else {
            return TenantStats::default();
        };
        let mut st = TenantStats {
            docs: t.docs,
            ..TenantStats::default()
        };
        for sv in &t.sources {
            st.vectors += sv.count;
            st.ann_pending += sv.pending.len();
            if let Some(a) = &sv.ann {
                st.ann_indexed += a.len();
                st.ann_removed += a.tombstones();
            }
            if sv.next.is_some() {
                st.ann_rebuilds += 1;
            }
        }
        st
    }

    /// Runs a search. Waits first until every write enqueued before the call is visible.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<Hit>, SearchError> {
        let s = &self.shared;
        let max = s.cfg.max_top_k;
        if q.top_k == 0 || q.top_k > max {
            return Err(SearchError::TopKOutOfRange { got: q.top_k, max });
        }
        let text = q.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
        let (use_text, use_vector) = match q.mode {
            Mode::Text => {
                if text.is_none() {
                    return Err(SearchError::EmptyQuery("text search needs query text"));
                }
                (true, false)
            }
            Mode::Vector => {
                if q.vector.is_none() {
                    return Err(SearchError::EmptyQuery(
                        "vector search needs a query vector",
                    ));
                }
                (false, true)
            }
            Mode::Hybrid => {
                if text.is_none() && q.vector.is_none() {
                    return Err(SearchError::EmptyQuery(
                        "hybrid search needs query text or a query vector",
                    ));
                }
                (text.is_some(), q.vector.is_some())
            }
        };
        let qv = match (&q.vector, use_vector) {
            (Some(v), true) => {
                let v = simd::normalized(v)?;
                if let Some(d) = self.dimension(&q.tenant) {
                    dim_matches(d, v.len())?;
                }
                Some(v)
            }
            _ => None,
        };
        let parsed = text.filter(|_| use_text).map(text::parse_text);

        // Read-your-writes: everything enqueued before this point must be applied, and for
        // text, committed.
        self.wait_for(s.enqueued.load(Ordering::SeqCst))?;
        expire_due(s)?;
        if parsed.is_some() {
            make_text_visible(s)?;
        }

        let k = q.top_k;
        let depth = if use_text && use_vector {
            k.max(HYBRID_DEPTH)
        } else {
            k
        };
        let text_hits = match &parsed {
            Some(p) => s.text.search(
                &q.tenant,
                q.source,
                q.owner.as_deref(),
                q.conversation_id.as_deref(),
                q.key_prefix.as_deref(),
                &q.filter,
                p,
                depth,
            )?,
            None => Vec::new(),
        };
        let cat = s.catalog.read();
        let m = Matcher {
            tenant: &q.tenant,
            source: q.source,
            owner: q.owner.as_deref(),
            conversation_id: q.conversation_id.as_deref(),
            key_prefix: q.key_prefix.as_deref(),
            filter: &q.filter,
        };
        // Defence in depth: every hit is re-checked against the scope in the catalog.
        let text_hits: Vec<(Handle, f32)> = text_hits
            .into_iter()
            .filter(|(h, _)| cat.docs.get(h).is_some_and(|d| m.matches(d)))
            .collect();
        let vector_hits = match &qv {
            Some(v) => self.vector_search(&cat, &m, v, depth)?,
            None => Vec::new(),
        };
        let ranked: Vec<(Handle, f32)> = if use_text && use_vector {
            fuse(&[&vector_hits, &text_hits], k)
        } else if use_vector {
            vector_hits
        } else {
            text_hits
        };
        Ok(ranked
            .into_iter()
            .take(k)
            .filter_map(|(h, score)| {
                cat.docs.get(&h).map(|d| Hit {
                    id: d.id.to_string(),
                    conversation_id: d.conversation_id.as_deref().map(str::to_string),
                    score,
                })
            })
            .collect())
    }

    fn vector_search(
        &self,
        cat: &Catalog,
        m: &Matcher<'_>,
        qv: &[f32],
        k: usize,
    ) -> Result<Vec<(Handle, f32)>, SearchError> {
        let Some(ts) = cat.tenant(m.tenant) else {
            return Ok(Vec::new());
        };
        let Some(dim) = ts.dim else {
            return Ok(Vec::new());
        };
        dim_matches(dim, qv.len())?;
        let keep = |h: Handle| cat.docs.get(&h).is_some_and(|d| m.matches(d));
        let keep_dyn: &dyn Fn(Handle) -> bool = &keep;
        let filtered = if m.trivial_within_block() {
            None
        } else {
            Some(keep_dyn)
        };
        let push = |top: &mut TopK, h: Handle| {
            if let Some(v) = cat.vector(h) {
                top.push(dot(v, qv), h);
            }
        };
        let sv = &ts.sources[m.source.index()];
        let mut top = TopK::new(k);

        if let Some(c) = m.conversation_id {
            // A conversation is small: score its documents one by one.
            for &h in ts.by_conversation.get(c).into_iter().flatten() {
                if keep(h) {
                    push(&mut top, h);
                }
            }
        } else if let Some(o) = m.owner {
            if let Some((owner, _)) = ts.by_owner.get_key_value(o) {
                if let Some(block) = sv.blocks.get(&Some(owner.clone())) {
                    scan_block(block, dim, qv, filtered, &mut top);
                }
            }
        } else {
            let threshold = self.shared.cfg.ann_threshold;
            let ann = sv
                .ann
                .as_ref()
                .filter(|_| sv.count > threshold && sv.pending.len() <= threshold);
            match ann {
                None => {
                    for block in sv.blocks.values() {
                        scan_block(block, dim, qv, filtered, &mut top);
                    }
                }
                Some(ann) => {
                    // Selective filters: if few documents match, exact beats a filtered graph walk.
                    let mut selected: Option<Vec<Handle>> = None;
                    if filtered.is_some() {
                        let mut hs = Vec::new();
                        'blocks: for b in sv.blocks.values() {
                            for &h in &b.handles {
                                if keep(h) {
                                    hs.push(h);
                                    if hs.len() > threshold {
                                        break 'blocks;
                                    }
                                }
                            }
                        }
                        if hs.len() <= threshold {
                            selected = Some(hs);
                        }
                    }
                    if let Some(hs) = selected {
                        for h in hs {
                            push(&mut top, h);
                        }
                    } else {
                        // The walk keeps `ef` candidates; the best of them by quantised
                        // score are re-scored.
                        let rescored = k.saturating_add(k.max(ANN_RESCORE_MARGIN));
                        match ann.candidates(qv, rescored, filtered) {
                            Ok(cands) => {
                                // A graph holds only this (tenant, source)'s documents, and
                                // removals happen under the catalog lock this search holds for
                                // reading, so unfiltered candidates need no check; a node the
                                // builder added for a document deleted meanwhile has no vector
                                // left and is skipped.
                                for &h in &cands {
                                    if filtered.is_none() || keep(h) {
                                        if let Some(v) = cat.vector_in(sv, dim, h) {
                                            top.push(dot(v, qv), h);
                                        }
                                    }
                                }
                                // Pending vectors may be in the graph already while the
                                // builder moves them.
                                if !sv.pending.is_empty() {
                                    let seen: HashSet<Handle> = cands.into_iter().collect();
                                    for &h in &sv.pending {
                                        if !seen.contains(&h) && keep(h) {
                                            push(&mut top, h);
                                        }
                                    }
                                }
                            }
                            Err(_) => {
                                for block in sv.blocks.values() {
                                    scan_block(block, dim, qv, filtered, &mut top);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(top.into_sorted())
    }
}

/// A 64-bit hash of a document's text, identifying the version a derived vector was computed
/// from (see [`IndexOp::SetVector`]). Stable within a process.
pub fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The tenant and vector an operation would store, if any.
fn op_vector(op: &IndexOp) -> Option<(&str, &[f32])> {
    match op {
        IndexOp::Upsert(d) | IndexOp::UpsertKeepDerived(d) => {
            d.vector.as_deref().map(|v| (d.tenant.as_str(), v))
        }
        IndexOp::SetVector { tenant, vector, .. } => Some((tenant.as_str(), vector.as_slice())),
        _ => None,
    }
}

fn dim_matches(expected: usize, got: usize) -> Result<(), SearchError> {
    if expected == got {
        Ok(())
    } else {
        Err(SearchError::DimensionMismatch { expected, got })
    }
}

/// Reciprocal-rank fusion of rankings (best first); ties go to the smaller handle.
fn fuse(lists: &[&[(Handle, f32)]], k: usize) -> Vec<(Handle, f32)> {
    let mut scores: HashMap<Handle, f32> = HashMap::new();
    for list in lists {
        for (rank, (h, _)) in list.iter().enumerate() {
            *scores.entry(*h).or_default() += 1.0 / (RRF_K + (rank + 1) as f32);
        }
    }
    let mut v: Vec<(Handle, f32)> = scores.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        let s = &self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        {
            let _q = s.queue.lock();
            s.queue_cv.notify_all();
        }
        {
            let _a = s.ann_queue.lock();
            s.ann_cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type TextWriter = tantivy::IndexWriter<tantivy::TantivyDocument>;

/// The current time in unix milliseconds, the clock of [`Doc::expires_at_ms`].
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Drops the documents whose expiry has passed (an empty batch does that), so that no search
/// returns one or spends a place of its `top_k` on it.
fn expire_due(s: &Shared) -> Result<(), SearchError> {
    if !s.catalog.read().expiry_due(now_ms()) {
        return Ok(());
    }
    apply_batch(s, Vec::new())
}

/// Makes every batch applied so far visible to text searches: commits and reloads unless that
/// already happened. Concurrent callers share one commit (the second finds it done under the
/// writer lock).
fn make_text_visible(s: &Shared) -> Result<(), SearchError> {
    let need = s.text_added.load(Ordering::SeqCst);
    if s.text_visible.load(Ordering::SeqCst) >= need {
        return Ok(());
    }
    let mut w = s.writer.lock();
    commit_text(s, &mut w)
}

/// Commits the writer and reloads the reader if some batch is not visible yet. Call with the
/// writer lock held. A failure marks the index failed.
fn commit_text(s: &Shared, w: &mut TextWriter) -> Result<(), SearchError> {
    let target = s.text_added.load(Ordering::SeqCst);
    if s.text_visible.load(Ordering::SeqCst) >= target {
        return Ok(());
    }
    let res = w
        .commit()
        .map_err(SearchError::from)
        .and_then(|_| s.text.reload());
    *s.last_commit.lock() = Instant::now();
    match res {
        Ok(()) => {
            s.text_visible.store(target, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            s.failure.lock().get_or_insert(e.to_string());
            Err(e)
        }
    }
}

fn text_dirty(s: &Shared) -> bool {
    s.text_visible.load(Ordering::SeqCst) < s.text_added.load(Ordering::SeqCst)
}

/// Background commit, at most every [`BACKGROUND_COMMIT`], so uncommitted text (memory in the
/// writer) stays bounded when nobody searches text.
fn maybe_commit(s: &Shared) {
    if !text_dirty(s) || s.last_commit.lock().elapsed() < BACKGROUND_COMMIT {
        return;
    }
    let mut w = s.writer.lock();
    let _ = commit_text(s, &mut w);
}

fn indexer_loop(s: &Shared) {
    loop {
        let (ops, ticket) = {
            let mut q = s.queue.lock();
            loop {
                if !q.ops.is_empty() || s.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                if text_dirty(s) {
                    let due = *s.last_commit.lock() + BACKGROUND_COMMIT;
                    if Instant::now() >= due {
                        break;
                    }
                    s.queue_cv.wait_until(&mut q, due);
                } else {
                    s.queue_cv.wait(&mut q);
                }
            }
            if q.ops.is_empty() && s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            (std::mem::take(&mut q.ops), q.next_ticket)
        };
        if ops.is_empty() {
            // Woken for the background commit.
            maybe_commit(s);
            continue;
        }
        let res = catch_unwind(AssertUnwindSafe(|| apply_batch(s, ops)));
        let err = match res {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("indexer panicked".to_string()),
        };
        if let Some(e) = err {
            s.failure.lock().get_or_insert(e);
        }
        s.applied.store(ticket, Ordering::SeqCst);
        {
            let _g = s.applied_lock.lock();
            s.applied_cv.notify_all();
        }
        maybe_commit(s);
    }
}

/// Applies a batch to the catalog and the text writer (not committed: see
/// [`make_text_visible`]). Holds the writer lock throughout, so whoever else takes it (a commit,
/// a snapshot) sees catalog and text writer at the same batch boundary.
fn apply_batch(s: &Shared, ops: Vec<IndexOp>) -> Result<(), SearchError> {
    let writer = s.writer.lock();
    let mut text = TextChanges::default();
    let mut dirty: Vec<(Arc<str>, Source)> = Vec::new();
    {
        let mut cat = s.catalog.write();
        let mut touched: HashSet<String> = HashSet::new();
        for op in ops {
            match op {
                IndexOp::Upsert(doc) => {
                    touched.insert(doc.tenant.clone());
                    if let Some(d) = cat.upsert(doc, false, &mut text) {
                        dirty.push(d);
                    }
                }
                IndexOp::UpsertKeepDerived(doc) => {
                    touched.insert(doc.tenant.clone());
                    if let Some(d) = cat.upsert(doc, true, &mut text) {
                        dirty.push(d);
                    }
                }
                IndexOp::SetVector {
                    tenant,
                    source,
                    id,
                    text_hash,
                    vector,
                } => {
                    if let Some(d) = cat.set_vector(&tenant, source, &id, text_hash, &vector) {
                        dirty.push(d);
                    }
                    touched.insert(tenant);
                }
                IndexOp::Delete { tenant, source, id } => {
                    touched.insert(tenant.clone());
                    let hs = cat.handles_of(&tenant, |t| {
                        t.by_id[source.index()]
                            .get(id.as_str())
                            .copied()
                            .into_iter()
                            .collect()
                    });
                    cat.remove_all(hs, &mut text);
                }
                IndexOp::DeleteConversation {
                    tenant,
                    conversation_id,
                } => {
                    touched.insert(tenant.clone());
                    let hs =
                        cat.handles_of(&tenant, |t| members(&t.by_conversation, &conversation_id));
                    cat.remove_all(hs, &mut text);
                }
                IndexOp::DeleteOwner { tenant, owner } => {
                    touched.insert(tenant.clone());
                    let hs = cat.handles_of(&tenant, |t| members(&t.by_owner, &owner));
                    cat.remove_all(hs, &mut text);
                }
                IndexOp::DeleteTenant { tenant } => {
                    let hs = cat.handles_of(&tenant, |t| {
                        t.by_id.iter().flat_map(|m| m.values().copied()).collect()
                    });
                    cat.remove_all(hs, &mut text);
                    // Forget its graphs too: a rebuild starts from scratch (its dimension stays).
                    cat.tenants.remove(tenant.as_str());
                }
            }
        }
        // Scopes that just grew past the threshold get an ANN graph, filled in the background;
        // graphs left with many removed nodes get a replacement, filled the same way.
        for tenant in touched {
            let Some(key) = cat
                .tenants
                .get_key_value(tenant.as_str())
                .map(|(k, _)| k.clone())
            else {
                continue;
            };
            let Some(ts) = cat.tenants.get_mut(&key) else {
                continue;
            };
            let Some(dim) = ts.dim else { continue };
            for (i, src) in [Source::Items, Source::Memory].into_iter().enumerate() {
                let sv = &mut ts.sources[i];
                // An empty graph for the scope's live vectors, with room to grow.
                let empty_graph = |sv: &catalog::SourceVectors| {
                    ann::Ann::new(
                        dim,
                        s.cfg.ann_quantization,
                        s.ann_ef.load(Ordering::SeqCst),
                        sv.count,
                        sv.vectors(dim),
                    )
                    .map(Arc::new)
                };
                if sv.ann.is_none() && sv.count > s.cfg.ann_threshold {
                    sv.ann = Some(empty_graph(sv)?);
                    sv.pending = sv.all_handles();
                    dirty.push((key.clone(), src));
                } else if sv.next.is_none() && sv.ann.as_ref().is_some_and(|a| a.needs_rebuild()) {
                    // Many removed nodes: build a fresh graph beside the serving one.
                    sv.next = Some(empty_graph(sv)?);
                    sv.next_pending = sv.all_handles();
                    dirty.push((key.clone(), src));
                }
            }
        }
        cat.remove_expired(now_ms(), &mut text);
        // A document added and removed within this batch never reaches the text index.
        text.adds.retain(|(h, _)| cat.docs.contains_key(h));
    }
    if !text.deletes.is_empty() || !text.adds.is_empty() {
        for h in &text.deletes {
            s.text.delete(&writer, *h);
        }
        let added = text
            .adds
            .iter()
            .try_for_each(|(h, doc)| s.text.add(&writer, *h, doc));
        // Even after a failed add, earlier changes of the batch are in the writer.
        s.text_added.fetch_add(1, Ordering::SeqCst);
        added?;
    }
    drop(writer);
    if !dirty.is_empty() {
        let mut q = s.ann_queue.lock();
        for d in dirty {
            if !q.contains(&d) {
                q.push_back(d);
            }
        }
        s.ann_cv.notify_one();
    }
    Ok(())
}

/// The handles in `map[key]`.
fn members(map: &HashMap<Arc<str>, HashSet<Handle>>, key: &str) -> Vec<Handle> {
    map.get(key)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// Background thread: moves pending vectors into ANN graphs, a chunk at a time, outside the
/// catalog lock (searches meanwhile scan pending vectors exactly).
fn ann_loop(s: &Shared) {
    loop {
        let (tenant, source) = {
            let mut q = s.ann_queue.lock();
            loop {
                if s.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(x) = q.pop_front() {
                    break x;
                }
                s.ann_cv.wait(&mut q);
            }
        };
        loop {
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let _gate = s.ann_gate.lock();
            // The serving graph's pending vectors first, then a replacement graph's.
            let (ann, chunk, replacement) = {
                let cat = s.catalog.read();
                let Some(sv) = cat.tenant(&tenant).map(|t| &t.sources[source.index()]) else {
                    break;
                };
                let (ann, pending, replacement) = match (&sv.ann, &sv.next) {
                    (Some(a), _) if !sv.pending.is_empty() => (a.clone(), &sv.pending, false),
                    (_, Some(n)) => (n.clone(), &sv.next_pending, true),
                    _ => break,
                };
                // Pending handles are live and have a vector (deletes leave `pending`).
                let chunk: Vec<(Handle, Vec<f32>)> = pending
                    .iter()
                    .take(ANN_CHUNK)
                    .filter_map(|&h| cat.vector(h).map(|v| (h, v.to_vec())))
                    .collect();
                (ann, chunk, replacement)
            };
            let done = match ann.add_all(&chunk, &s.ann_yield) {
                Ok(n) => n,
                Err(e) => {
                    s.failure.lock().get_or_insert(e.to_string());
                    break;
                }
            };
            let mut cat = s.catalog.write();
            let added = &chunk[..done];
            let dead: Vec<Handle> = added
                .iter()
                .map(|(h, _)| *h)
                .filter(|h| !cat.docs.contains_key(h))
                .collect();
            if let Some(t) = cat.tenants.get_mut(&*tenant) {
                let sv = &mut t.sources[source.index()];
                let pending = if replacement {
                    &mut sv.next_pending
                } else {
                    &mut sv.pending
                };
                for (h, _) in added {
                    pending.remove(h);
                }
                // A complete replacement takes over from the graph it replaces.
                if replacement && sv.next_pending.is_empty() && sv.pending.is_empty() {
                    if let Some(next) = sv.next.take() {
                        sv.ann = Some(next);
                    }
                }
            }
            // Deleted while being added: the catalog forgot them, the graph must too.
            for h in dead {
                ann.remove(h);
            }
            if chunk.is_empty() {
                break;
            }
        }
    }
}
