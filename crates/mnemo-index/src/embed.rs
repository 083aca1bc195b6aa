//! The built-in embedder in the server (cargo feature `embedder`).
//!
//! With `mnemo serve --embedding-model DIR` the search service computes vectors for the
//! documents that have none: conversation items without a client `embedding`, and memory
//! values (JSON objects) without an `embedding` field. Embedding runs off the write path:
//!
//! * The search service's change-log tail (and the start-up rebuild) *offers* every such
//!   document to the [`Pipeline`] after the document's text is in the index. Offers never
//!   block: a full queue turns into a *backfill* of the tenant (below).
//! * One worker thread takes up to [`BATCH`] texts at a time, embeds them on its own rayon
//!   pool (`--embedding-threads`, default 1), writes item vectors back into the item records
//!   ([`Store::set_item_vector`]: no change-log entry, no durability wait) and attaches every
//!   vector to its index document ([`IndexOp::SetVector`], which lands only on the document
//!   version it was computed for). Item vectors therefore survive a restart; memory vectors
//!   live in the index only (values are user data with ETags) and are computed again after a
//!   restart.
//! * A **backfill** scans a tenant's items and memory values in the store and offers every
//!   document that still needs a vector, waiting for queue space. It runs when the queue was
//!   full for one of the tenant's offers, so the queue's memory stays bounded however fast
//!   clients write.
//!
//! Progress is tracked per tenant as the change-log positions of the documents not yet
//! embedded (documents found by the start-up rebuild count as position 0), so a search with
//! `"consistency": "strong"` can wait until every write acknowledged before it started is
//! embedded ([`Pipeline::ready`]).
//!
//! A tenant whose vectors have another dimension than the model's (client vectors came
//! first) is never embedded; its text-only vector queries are refused by the handler.

use crate::SearchService;
use futures::future::join_all;
use mnemo_embed::{EmbedError, Embedder};
use mnemo_search::{text_hash, Doc, IndexOp, SearchIndex, Source};
use mnemo_storage::{Store, TenantId};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Most texts embedded in one batch.
pub const BATCH: usize = 32;
/// Most texts waiting in the queue.
const MAX_JOBS: usize = 8192;
/// Most bytes of text waiting in the queue.
const MAX_QUEUE_BYTES: usize = 32 << 20;
/// Longest text handed to the model, in bytes. The model reads at most
/// [`mnemo_embed::MAX_TOKENS`] tokens, and a BERT word piece covers at most ~100 bytes, so
/// this never changes a vector in practice; it bounds tokenizer work and queue memory.
const MAX_TEXT_BYTES: usize = 32 << 10;
/// Query embeddings kept for repeated queries.
const QUERY_CACHE: usize = 256;

/// Why the built-in embedder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmbedSetupError {
    /// The model could not be loaded.
    #[error("cannot load the embedding model from {dir}")]
    Model {
        /// The model directory.
        dir: String,
        /// What went wrong.
        source: EmbedError,
    },
    /// The thread pools could not be built, or the settings are invalid.
    #[error("embedder threads: {0}")]
    Threads(String),
}

/// A loaded model and its thread pools, ready to start [`Pipeline`]s. Clones share the
/// model and the pools: a cluster node starts one pipeline per shard from one config, and
/// they embed on the same threads.
#[derive(Clone)]
pub struct EmbedderConfig {
    embedder: Arc<Embedder>,
    threads: usize,
    model_dir: String,
    /// Background embedding (`threads` threads).
    pool: Arc<rayon::ThreadPool>,
    /// Query texts (one thread per core).
    query_pool: Arc<rayon::ThreadPool>,
}

impl EmbedderConfig {
    /// Loads the model from `dir` (`config.json`, `model.safetensors`, `tokenizer.json`);
    /// background embedding will use `threads` threads (at least 1).
    pub fn load(dir: &Path, threads: usize) -> Result<Self, EmbedSetupError> {
        if threads == 0 {
            return Err(EmbedSetupError::Threads(
                "--embedding-threads must be at least 1".into(),
            ));
        }
        let embedder = Embedder::load(dir).map_err(|source| EmbedSetupError::Model {
            dir: dir.display().to_string(),
            source,
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mnemo-embed-{i}"))
            .build()
            .map_err(|e| EmbedSetupError::Threads(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let query_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("mnemo-embed-query-{i}"))
            .build()
            .map_err(|e| EmbedSetupError::Threads(e.to_string()))?;
        Ok(EmbedderConfig {
            embedder: Arc::new(embedder),
            threads,
            model_dir: dir.display().to_string(),
            pool: Arc::new(pool),
            query_pool: Arc::new(query_pool),
        })
    }

    /// Length of the model's vectors.
    pub fn dimension(&self) -> usize {
        self.embedder.dimension()
    }
}

/// What became of an offered document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued (or already queued).
    Queued,
    /// Needs no built-in vector (has one, no text, gone, or the tenant cannot take one).
    Skipped,
    /// The queue is full.
    Full,
}

struct Job {
    tenant: String,
    source: Source,
    id: String,
    conversation_id: Option<String>,
    text: String,
    text_hash: u64,
    pos: u64,
}

type JobKey = (String, Source, String, u64);

impl Job {
    fn key(&self) -> JobKey {
        (
            self.tenant.clone(),
            self.source,
            self.id.clone(),
            self.text_hash,
        )
    }
}

#[derive(Default)]
struct TenantProgress {
    /// Change-log position → documents from it not yet embedded.
    outstanding: BTreeMap<u64, usize>,
    /// Lowest position whose documents may have been dropped from a full queue: a backfill
    /// scan is due or running.
    backfill: Option<u64>,
    /// A backfill scan of the tenant is running.
    running: bool,
    /// An offer was dropped while the scan ran: scan again.
    rerun: bool,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    queued: HashSet<JobKey>,
    bytes: usize,
    tenants: HashMap<String, TenantProgress>,
}

#[derive(Default)]
struct QueryCache {
    tick: u64,
    entries: HashMap<String, (Arc<Vec<f32>>, u64)>,
}

/// The background embedding pipeline of one server (see the module docs).
pub struct Pipeline {
    embedder: Arc<Embedder>,
    dim: usize,
    store: Arc<Store>,
    index: Arc<SearchIndex>,
    runtime: tokio::runtime::Handle,
    pool: Arc<rayon::ThreadPool>,
    query_pool: Arc<rayon::ThreadPool>,
    /// Set by [`Pipeline::stop`]: the worker and the backfill loop end.
    stopped: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    work: Condvar,
    space: tokio::sync::Notify,
    backfill_due: tokio::sync::Notify,
    progress: tokio::sync::watch::Sender<u64>,
    cache: Mutex<QueryCache>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Pipeline {
    /// Builds the pipeline and starts its worker thread. Call inside the tokio runtime.
    pub(crate) fn start(
        cfg: EmbedderConfig,
        store: Arc<Store>,
        index: Arc<SearchIndex>,
    ) -> Result<Arc<Self>, EmbedSetupError> {
        let dim = cfg.embedder.dimension();
        let p = Arc::new(Pipeline {
            embedder: cfg.embedder.clone(),
            dim,
            store,
            index,
            runtime: tokio::runtime::Handle::current(),
            pool: cfg.pool.clone(),
            query_pool: cfg.query_pool.clone(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            space: tokio::sync::Notify::new(),
            backfill_due: tokio::sync::Notify::new(),
            progress: tokio::sync::watch::channel(0).0,
            cache: Mutex::new(QueryCache::default()),
        });
        let worker = p.clone();
        std::thread::Builder::new()
            .name("mnemo-embed-worker".into())
            .spawn(move || worker.work_loop())
            .map_err(|e| EmbedSetupError::Threads(e.to_string()))?;
        metrics::gauge!("mnemo_embed_queue_depth").set(0.0);
        for source in ["items", "memory"] {
            metrics::counter!("mnemo_embedded_total", "source" => source).increment(0);
        }
        metrics::counter!("mnemo_embed_queue_full_total").increment(0);
        tracing::info!(
            model = %cfg.model_dir,
            dimension = dim,
            threads = cfg.threads,
            "built-in embedder loaded"
        );
        Ok(p)
    }

    /// Length of the model's vectors.
    pub(crate) fn dimension(&self) -> usize {
        self.dim
    }

    /// Stops the worker thread and the backfill loop (the search service stopped: a cluster
    /// node closed its shard). Queued texts are dropped; they are offered again by whoever
    /// opens the store next.
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Under the lock, so a worker about to wait sees the flag or gets the wake-up.
        let _st = lock(&self.state);
        self.work.notify_all();
        self.backfill_due.notify_waiters();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `tenant` can take the model's vectors: its dimension is unset or equal.
    pub(crate) fn accepts(&self, tenant: &str) -> bool {
        self.index.dimension(tenant).is_none_or(|d| d == self.dim)
    }

    /// Offers a document that is in the index (position `pos` of its tenant's change log; 0
    /// for documents found at start-up). Never blocks. When the queue is full the tenant is
    /// marked for a backfill scan, which offers the document again later.
    pub(crate) fn offer(&self, doc: &Doc, pos: u64) -> Offer {
        let r = self.try_offer(doc, pos, true);
        if r == Offer::Full {
            self.backfill_due.notify_one();
        }
        r
    }

    /// Offers a document, waiting for queue space (backfill scans).
    pub(crate) async fn offer_wait(&self, doc: &Doc, pos: u64) -> Offer {
        loop {
            let space = self.space.notified();
            match self.try_offer(doc, pos, false) {
                Offer::Full => space.await,
                other => return other,
            }
        }
    }

    fn try_offer(&self, doc: &Doc, pos: u64, backfill_if_full: bool) -> Offer {
        if doc.vector.is_some() || doc.text.trim().is_empty() || !self.accepts(&doc.tenant) {
            return Offer::Skipped;
        }
        let hash = text_hash(&doc.text);
        if !self
            .index
            .needs_vector(&doc.tenant, doc.source, &doc.id, hash)
        {
            return Offer::Skipped;
        }
        let text = truncated(&doc.text, MAX_TEXT_BYTES);
        let job = Job {
            tenant: doc.tenant.clone(),
            source: doc.source,
            id: doc.id.clone(),
            conversation_id: doc.conversation_id.clone(),
            text: text.to_owned(),
            text_hash: hash,
            pos,
        };
        let mut st = lock(&self.state);
        if st.queued.contains(&job.key()) {
            return Offer::Queued;
        }
        if st.jobs.len() >= MAX_JOBS || st.bytes + text.len() > MAX_QUEUE_BYTES {
            if backfill_if_full {
                let t = st.tenants.entry(job.tenant).or_default();
                t.backfill = Some(t.backfill.map_or(pos, |b| b.min(pos)));
                t.rerun = true;
                metrics::counter!("mnemo_embed_queue_full_total").increment(1);
            }
            return Offer::Full;
        }
        st.queued.insert(job.key());
        st.bytes += job.text.len();
        *st.tenants
            .entry(job.tenant.clone())
            .or_default()
            .outstanding
            .entry(pos)
            .or_insert(0) += 1;
        st.jobs.push_back(job);
        metrics::gauge!("mnemo_embed_queue_depth").set(st.jobs.len() as f64);
        drop(st);
        self.work.notify_one();
        Offer::Queued
    }

    /// Whether every document of `tenant` from change-log positions up to `target` (and
    /// every document found at start-up) that needs a built-in vector has one in the index.
    pub(crate) fn ready(&self, tenant: &str, target: u64) -> bool {
        let st = lock(&self.state);
        st.tenants.get(tenant).is_none_or(|t| {
            t.backfill.is_none_or(|b| b > target)
                && t.outstanding.keys().next().is_none_or(|&p| p > target)
        })
    }

    /// Notified whenever embedding makes progress.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Runs backfill scans (through `svc`) whenever a tenant needs one, until stopped.
    pub(crate) async fn backfill_loop(self: Arc<Self>, svc: Arc<SearchService>) {
        loop {
            let due = self.backfill_due.notified();
            if self.is_stopped() {
                return;
            }
            while let Some((tenant, pos)) = self.start_backfill() {
                tracing::info!(%tenant, "embedding queue was full: scanning the tenant for documents without vectors");
                let res = match TenantId::new(tenant.clone()) {
                    Ok(t) => svc.offer_tenant(&t, pos, &self).await,
                    Err(e) => Err(e),
                };
                let ok = match res {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "embedding backfill failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        false
                    }
                };
                self.end_backfill(&tenant, ok);
            }
            due.await;
        }
    }

    /// Picks a tenant due for a backfill scan and marks the scan running.
    fn start_backfill(&self) -> Option<(String, u64)> {
        let mut st = lock(&self.state);
        let (tenant, t) = st
            .tenants
            .iter_mut()
            .find(|(_, t)| t.backfill.is_some() && !t.running)?;
        t.running = true;
        t.rerun = false;
        Some((tenant.clone(), t.backfill.unwrap_or(0)))
    }

    fn end_backfill(&self, tenant: &str, ok: bool) {
        {
            let mut st = lock(&self.state);
            if let Some(t) = st.tenants.get_mut(tenant) {
                t.running = false;
                if ok && !t.rerun {
                    t.backfill = None;
                }
                if t.backfill.is_none() && t.outstanding.is_empty() {
                    st.tenants.remove(tenant);
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
    }

    fn work_loop(self: Arc<Self>) {
        loop {
            let batch: Vec<Job> = {
                let mut st = lock(&self.state);
                while st.jobs.is_empty() && !self.is_stopped() {
                    st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                if self.is_stopped() {
                    return;
                }
                let n = st.jobs.len().min(BATCH);
                let batch: Vec<Job> = st.jobs.drain(..n).collect();
                for j in &batch {
                    st.queued.remove(&j.key());
                    st.bytes -= j.text.len();
                }
                metrics::gauge!("mnemo_embed_queue_depth").set(st.jobs.len() as f64);
                batch
            };
            self.space.notify_waiters();
            if catch_unwind(AssertUnwindSafe(|| self.process(&batch))).is_err() {
                tracing::error!(
                    texts = batch.len(),
                    "embedding batch panicked; its documents stay without built-in vectors"
                );
            }
            self.finish(&batch);
        }
    }

    /// Embeds a batch, writes item vectors back to the store and attaches every vector to
    /// its index document.
    fn process(&self, batch: &[Job]) {
        // Deleted, replaced or already embedded since it was offered: nothing to do.
        let live: Vec<&Job> = batch
            .iter()
            .filter(|j| {
                self.accepts(&j.tenant)
                    && self
                        .index
                        .needs_vector(&j.tenant, j.source, &j.id, j.text_hash)
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let texts: Vec<&str> = live.iter().map(|j| j.text.as_str()).collect();
        let started = Instant::now();
        let vectors = match self.pool.install(|| self.embedder.embed(&texts)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, texts = texts.len(), "embedding failed");
                return;
            }
        };
        metrics::histogram!("mnemo_embed_batch_seconds").record(started.elapsed().as_secs_f64());
        let items = live.iter().filter(|j| j.source == Source::Items).count();
        metrics::counter!("mnemo_embedded_total", "source" => "items").increment(items as u64);
        metrics::counter!("mnemo_embedded_total", "source" => "memory")
            .increment((live.len() - items) as u64);

        // The first vector fixes a tenant's dimension; a tenant whose clients were first with
        // another dimension takes none.
        let accepted: Vec<(&Job, Vec<f32>)> = live
            .into_iter()
            .zip(vectors)
            .filter(|(j, v)| match self.index.check_vector(&j.tenant, v) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(tenant = %j.tenant, error = %e, "built-in vector not used");
                    false
                }
            })
            .collect();
        // Items keep their vector in the store, so a restart does not embed them again (a
        // read-only replica keeps them in its index only).
        let writable = !self.store.engine().is_read_only();
        let writes = accepted
            .iter()
            .filter(|(j, _)| writable && j.source == Source::Items)
            .filter_map(|(j, v)| {
                let tenant = TenantId::new(j.tenant.clone()).ok()?;
                let conv = j.conversation_id.clone()?;
                let store = self.store.clone();
                let (id, v) = (j.id.clone(), v.clone());
                Some(async move {
                    if let Err(e) = store.set_item_vector(&tenant, &conv, &id, v).await {
                        tracing::warn!(%tenant, item = %id, error = %e, "cannot store a built-in item vector; it is computed again after a restart");
                    }
                })
            })
            .collect::<Vec<_>>();
        if !writes.is_empty() {
            self.runtime.block_on(join_all(writes));
        }
        let ops: Vec<IndexOp> = accepted
            .into_iter()
            .map(|(j, vector)| IndexOp::SetVector {
                tenant: j.tenant.clone(),
                source: j.source,
                id: j.id.clone(),
                text_hash: j.text_hash,
                vector,
            })
            .collect();
        if let Err(e) = self
            .index
            .enqueue(ops)
            .and_then(|ticket| self.index.wait_for(ticket))
        {
            tracing::warn!(error = %e, "built-in vectors not indexed");
        }
    }

    /// Marks a batch's documents done (embedded, or not needing it any more).
    fn finish(&self, batch: &[Job]) {
        {
            let mut st = lock(&self.state);
            for j in batch {
                let Some(t) = st.tenants.get_mut(&j.tenant) else {
                    continue;
                };
                if let Some(n) = t.outstanding.get_mut(&j.pos) {
                    *n -= 1;
                    if *n == 0 {
                        t.outstanding.remove(&j.pos);
                    }
                }
                if t.outstanding.is_empty() && t.backfill.is_none() {
                    st.tenants.remove(&j.tenant);
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
    }

    /// Embeds a query text (blocking: call on a blocking thread). Recent queries are cached.
    pub(crate) fn query_vector(&self, text: &str) -> Result<Arc<Vec<f32>>, EmbedError> {
        let text = truncated(text, MAX_TEXT_BYTES);
        {
            let mut c = lock(&self.cache);
            c.tick += 1;
            let tick = c.tick;
            if let Some((v, used)) = c.entries.get_mut(text) {
                *used = tick;
                return Ok(v.clone());
            }
        }
        let v = self
            .query_pool
            .install(|| self.embedder.embed(&[text]))?
            .pop()
            .ok_or_else(|| EmbedError::Weights("no vector for the query".into()))?;
        metrics::counter!("mnemo_embed_queries_total").increment(1);
        let v = Arc::new(v);
        let mut c = lock(&self.cache);
        if c.entries.len() >= QUERY_CACHE {
            let oldest = c
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                c.entries.remove(&k);
            }
        }
        let tick = c.tick;
        c.entries.insert(text.to_owned(), (v.clone(), tick));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("héllo", 10), "héllo");
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("héllo", 3), "hé");
        assert_eq!(truncated("", 0), "");
    }
}
