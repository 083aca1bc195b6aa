//! # mnemo-index
//!
//! The index service: keeps one [`mnemo_search::SearchIndex`] per node in step with the
//! store. No HTTP here: the API layer calls [`SearchService`] and maps [`IndexError`].
//!
//! The index is derived data. It is built from the store when the server starts (one
//! consistent [`mnemo_storage::ReadView`] per tenant), then kept current as one subscriber of
//! the change log ([`mnemo_storage::Subscriber`]): for every logged change the service reads
//! the *current* state of the object (item, conversation, memory key) and upserts or deletes
//! its document. Reading current state makes the result independent of the order in which
//! concurrent writes were acknowledged: after the tail has passed a log position, the index
//! equals the store for everything changed up to it. A search first waits until the tail has
//! passed the tenant's newest acknowledged position ([`SearchService::wait_current`]), so
//! every acknowledged write is visible (read-your-writes) and deleted data never comes back.
//!
//! The index is snapshotted to the store's object store ([`snapshot`]), and with the built-in
//! embedder ([`embed`], cargo feature `embedder`) documents without a client vector get one
//! in the background; a search with [`Consistency::Strong`] also waits for those.

#![warn(missing_docs)]

mod docs;
#[cfg(feature = "embedder")]
pub mod embed;
#[cfg(not(feature = "embedder"))]
#[path = "embed_off.rs"]
pub mod embed;
mod error;
pub mod fields;
pub mod snapshot;

pub use docs::{
    item_doc, item_json, item_text, memory_doc, parse_vector, push_text_part, VectorError,
    ITEM_NOT_TEXT_KEY, ITEM_TEXT_KEYS, MAX_DIMENSIONS,
};
pub use error::IndexError;
pub use fields::{read_fields, ItemFields};
pub use snapshot::SnapshotOptions;

use embed::{EmbedderConfig, Pipeline};
use mnemo_search::{Doc, Hit, IndexOp, SearchConfig, SearchIndex, SearchQuery, Source};
use mnemo_storage::{
    ChangeEntry, ChangeOp, ConversationRecord, ReadView, Rows, Scope, Store, StoreError,
    Subscriber, TenantId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Largest `top_k`.
pub const MAX_TOP_K: usize = 1000;
/// How long a search waits for earlier writes to be indexed.
const WAIT: Duration = Duration::from_secs(10);
/// Change-log entries read per round of the tail.
const LOG_BATCH: usize = 1000;
/// Index operations applied per call during rebuilds.
const APPLY_CHUNK: usize = 2000;
/// Pause before retrying a tenant whose indexing failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Keeps the search index in step with the store.
pub struct SearchService {
    store: Arc<Store>,
    index: Arc<SearchIndex>,
    /// Per tenant, the log position up to which the index reflects the store.
    indexed: Mutex<HashMap<TenantId, u64>>,
    progress: tokio::sync::watch::Sender<u64>,
    /// The built-in embedder's pipeline, when enabled.
    embed: Option<Arc<Pipeline>>,
    /// Snapshot settings and state; `None` when snapshots are off.
    snapshots: Option<snapshot::Snapshots>,
    /// Set by [`SearchService::stop`]: the change-log tail ends.
    stopped: tokio::sync::watch::Sender<bool>,
}

/// Settings of the search service.
#[derive(Default)]
pub struct SearchOptions {
    /// The built-in embedder: embeds documents without a client vector, and query texts.
    pub embedder: Option<EmbedderConfig>,
    /// Index snapshots in the store's object store (default: off).
    pub snapshots: SnapshotOptions,
}

/// How long a search waits, and for what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Every write acknowledged before the search is visible by its text and client vectors;
    /// built-in embeddings may lag (the default).
    Eventual,
    /// Like `Eventual`, and every document acknowledged before the search also has its
    /// built-in embedding (when the server has an embedder).
    Strong,
}

/// A document of a rebuild or log batch that may need a built-in vector.
fn embed_candidate(op: &IndexOp) -> Option<&Doc> {
    match op {
        IndexOp::Upsert(d) | IndexOp::UpsertKeepDerived(d)
            if d.vector.is_none() && !d.text.trim().is_empty() =>
        {
            Some(d)
        }
        _ => None,
    }
}

/// The next row of a scan, skipping records that fail to decode (each is logged by the
/// store and counted here): one corrupt record must not stop a tenant's index.
async fn next_row<T>(rows: &mut Rows<T>) -> Result<Option<T>, StoreError> {
    let before = rows.skipped();
    let row = rows.next_skipping_corrupt().await;
    let skipped = rows.skipped() - before;
    if skipped > 0 {
        metrics::counter!("mnemo_search_corrupt_records_total").increment(skipped);
    }
    row
}

/// The upsert of an item's document, or its removal when the item's record is corrupt (it is
/// logged by the store and counted here, never indexed as an empty document).
fn item_op(
    tenant: &TenantId,
    rec: &ConversationRecord,
    item: &mnemo_storage::StoredItem,
) -> IndexOp {
    match item_doc(tenant, rec, item) {
        Ok(doc) => IndexOp::UpsertKeepDerived(doc),
        Err(_) => {
            metrics::counter!("mnemo_search_corrupt_records_total").increment(1);
            IndexOp::Delete {
                tenant: tenant.as_str().to_owned(),
                source: Source::Items,
                id: item.id.clone(),
            }
        }
    }
}

impl SearchService {
    /// Builds the index from the store (every tenant, every item and memory key), then
    /// starts tailing the change log. Returns once the index reflects the store. No snapshots.
    pub async fn start(store: Arc<Store>) -> Result<Arc<Self>, IndexError> {
        Self::start_with(store, SearchOptions::default()).await
    }

    /// [`SearchService::start`] with options. With snapshots, restores the newest usable
    /// snapshot from the store's object store and replays each tenant's change log from the
    /// position it records (tenants without a usable position are rebuilt from the store),
    /// then snapshots periodically. With an embedder, documents found without a vector are
    /// offered for embedding and embedded in the background (the service is ready before
    /// they are).
    pub async fn start_with(
        store: Arc<Store>,
        opts: SearchOptions,
    ) -> Result<Arc<Self>, IndexError> {
        let cfg = SearchConfig {
            max_top_k: MAX_TOP_K,
            wait_timeout: WAIT,
            ..SearchConfig::default()
        };
        let started = Instant::now();
        // Subscribed before anything is read, so no acknowledgement after the rebuild's reads
        // goes unnoticed.
        let changes = store.change_log().subscribe();
        let snapshots = snapshot::Snapshots::new(store.location(), &opts.snapshots);
        let loaded = match &snapshots {
            Some(s) => s.load(&cfg).await,
            None => None,
        };
        let (index, header) = match loaded {
            Some(l) => (l.index, Some(l.header)),
            None => (SearchIndex::new(cfg)?, None),
        };
        let index = Arc::new(index);
        let embed = match opts.embedder {
            Some(cfg) => Some(Pipeline::start(cfg, store.clone(), index.clone())?),
            None => None,
        };
        let svc = Arc::new(SearchService {
            store,
            index,
            indexed: Mutex::new(HashMap::new()),
            progress: tokio::sync::watch::channel(0).0,
            embed,
            snapshots,
            stopped: tokio::sync::watch::channel(false).0,
        });
        metrics::gauge!("mnemo_search_restored_docs").set(0.0);
        metrics::counter!("mnemo_search_corrupt_records_total").increment(0);
        let restored = header.is_some();
        match header {
            Some(h) => svc.resume(&h, started).await?,
            None => {
                let docs = svc.rebuild(svc.store.tenants().await?).await?;
                tracing::info!(
                    docs,
                    seconds = started.elapsed().as_secs_f64(),
                    "search index built from the store"
                );
            }
        }
        metrics::gauge!("mnemo_search_rebuild_seconds").set(started.elapsed().as_secs_f64());
        let tail = svc.clone();
        tokio::spawn(async move { tail.tail(changes).await });
        if let Some(p) = svc.embed.clone() {
            if restored {
                // A snapshot may hold documents whose embedding was still queued when it was
                // taken: offer every tenant's documents that lack a vector.
                let (svc2, p2) = (svc.clone(), p.clone());
                tokio::spawn(async move {
                    let tenants = match svc2.store.tenants().await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(error = %e, "listing tenants for embedding failed");
                            return;
                        }
                    };
                    for t in tenants {
                        let pos = svc2.indexed(&t);
                        if let Err(e) = svc2.offer_tenant(&t, pos, &p2).await {
                            tracing::warn!(tenant = %t, error = %e, "embedding scan failed");
                        }
                    }
                });
            }
            tokio::spawn(p.backfill_loop(svc.clone()));
        }
        Ok(svc)
    }

    /// Stops following the store's change log (a cluster node closing a shard it hands
    /// over): the index stops changing, and the service's background task lets go of the
    /// store. Searches still answer from what is indexed. Call [`SearchService::shutdown`]
    /// first for a last snapshot.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
        if let Some(p) = &self.embed {
            p.stop();
        }
    }

    /// Whether the built-in embedder is enabled.
    pub fn has_embedder(&self) -> bool {
        self.embed.is_some()
    }

    /// The index.
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// Applies `ops` to the index, then offers the documents among them that need a
    /// built-in vector to the embedder (as changes from log position `pos`; 0 at start-up).
    async fn apply(&self, ops: Vec<IndexOp>, pos: u64) -> Result<(), IndexError> {
        if ops.is_empty() {
            return Ok(());
        }
        let candidates: Vec<Doc> = match &self.embed {
            Some(_) => ops.iter().filter_map(embed_candidate).cloned().collect(),
            None => Vec::new(),
        };
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.apply(ops)).await??;
        if let Some(p) = &self.embed {
            for doc in &candidates {
                p.offer(doc, pos);
            }
        }
        Ok(())
    }

    /// Indexes every conversation item and memory key of `tenants`, each from one consistent
    /// view, and marks the log position read before the view as indexed. Returns the
    /// documents indexed.
    async fn rebuild(&self, tenants: Vec<TenantId>) -> Result<usize, IndexError> {
        let mut total = 0;
        for tenant in tenants {
            // Every entry up to `head` is in the view taken next; later changes are replayed
            // by the tail, so none is missed.
            let head = self.store.change_log().newest(&tenant).await?;
            let view = self.store.read_view().await?;
            let scope = Scope::tenant(tenant.clone());
            let mut ops = Vec::new();
            let mut convs = view.conversations(&scope).await?;
            while let Some(rec) = next_row(&mut convs).await? {
                push_items(&view, &scope, &rec, &mut ops).await?;
                if ops.len() >= APPLY_CHUNK {
                    total += ops.len();
                    self.apply(std::mem::take(&mut ops), 0).await?;
                }
            }
            let mut memory = view.memory(&scope, "").await?;
            while let Some(entry) = next_row(&mut memory).await? {
                if let Some(doc) = memory_doc(&tenant, &entry) {
                    ops.push(IndexOp::UpsertKeepDerived(doc));
                }
                if ops.len() >= APPLY_CHUNK {
                    total += ops.len();
                    self.apply(std::mem::take(&mut ops), 0).await?;
                }
            }
            total += ops.len();
            self.apply(ops, 0).await?;
            self.set_indexed(&tenant, head);
        }
        Ok(total)
    }

    fn indexed(&self, tenant: &TenantId) -> u64 {
        let m = self.indexed.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(tenant).copied().unwrap_or(0)
    }

    fn set_indexed(&self, tenant: &TenantId, seq: u64) {
        {
            let mut m = self.indexed.lock().unwrap_or_else(PoisonError::into_inner);
            let e = m.entry(tenant.clone()).or_insert(0);
            *e = (*e).max(seq);
        }
        self.progress.send_modify(|n| *n += 1);
    }

    async fn tail(self: Arc<Self>, changes: Subscriber) {
        // Tenants whose indexing failed, retried next round.
        let mut retry: Vec<(TenantId, u64)> = Vec::new();
        let mut stopped = self.stopped.subscribe();
        loop {
            if *stopped.borrow_and_update() {
                return;
            }
            // A snapshot waits for this round, so its positions are all applied.
            let round = self.tail_round().await;
            let mut todo = std::mem::take(&mut retry);
            todo.extend(changes.take_moved());
            for (tenant, acked) in todo {
                if acked <= self.indexed(&tenant) {
                    continue;
                }
                if let Err(e) = self.catch_up(&tenant, acked).await {
                    tracing::warn!(%tenant, error = %e, "search indexing failed; retrying");
                    retry.push((tenant, acked));
                }
            }
            drop(round);
            self.snapshot_if_due().await;
            if !retry.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            } else {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = self.snapshot_due() => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    }

    /// Applies every logged change of `tenant` up to `target`.
    async fn catch_up(&self, tenant: &TenantId, target: u64) -> Result<(), IndexError> {
        let log = self.store.change_log();
        let mut from = self.indexed(tenant);
        while from < target {
            let entries = log.read(tenant, from, LOG_BATCH).await?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                break;
            };
            let (first, last) = (first.seq, last.seq);
            let ops = self.resolve(tenant, &entries).await?;
            // Documents needing a built-in vector are offered before the position counts as
            // indexed, so a strong search that sees it indexed also waits for them. They are
            // tagged with the batch's first position: conservative for strong searches.
            self.apply(ops, first).await?;
            self.set_indexed(tenant, last);
            from = last;
        }
        // Positions without entries (none can be missing below an acknowledged one) are done.
        self.set_indexed(tenant, target);
        Ok(())
    }

    /// Turns log entries into index operations by reading the current state of what changed.
    async fn resolve(
        &self,
        tenant: &TenantId,
        entries: &[ChangeEntry],
    ) -> Result<Vec<IndexOp>, IndexError> {
        let scope = Scope::tenant(tenant.clone());
        let t = tenant.as_str().to_owned();
        let mut convs: HashMap<String, Option<ConversationRecord>> = HashMap::new();
        let mut ops = Vec::new();
        for e in entries {
            match &e.op {
                ChangeOp::ConversationCreated { conversation_id }
                | ChangeOp::ConversationUpdated { conversation_id }
                | ChangeOp::ItemsAdded {
                    conversation_id, ..
                } => {
                    if !convs.contains_key(conversation_id) {
                        let rec = match self.store.get_conversation(&scope, conversation_id).await {
                            Ok(r) => Some(r),
                            Err(StoreError::NotFound(_)) => None,
                            Err(err) => return Err(err.into()),
                        };
                        convs.insert(conversation_id.clone(), rec);
                    }
                    let Some(rec) = convs.get(conversation_id).cloned().flatten() else {
                        ops.push(IndexOp::DeleteConversation {
                            tenant: t.clone(),
                            conversation_id: conversation_id.clone(),
                        });
                        continue;
                    };
                    match &e.op {
                        ChangeOp::ConversationUpdated { .. } => {
                            // Metadata is a filter of every item: re-index them all, from one
                            // view of the conversation.
                            let view = self.store.read_view().await?;
                            match push_items(&view, &scope, &rec, &mut ops).await {
                                Ok(()) | Err(StoreError::NotFound(_)) => {}
                                Err(err) => return Err(err.into()),
                            }
                        }
                        ChangeOp::ItemsAdded { item_ids, .. } => {
                            for item_id in item_ids {
                                match self.store.get_item(&scope, conversation_id, item_id).await {
                                    Ok(item) => ops.push(item_op(tenant, &rec, &item)),
                                    Err(StoreError::NotFound(_)) => ops.push(IndexOp::Delete {
                                        tenant: t.clone(),
                                        source: Source::Items,
                                        id: item_id.clone(),
                                    }),
                                    Err(err) => return Err(err.into()),
                                }
                            }
                        }
                        _ => {}
                    }
                }
                ChangeOp::ItemsDeleted { item_ids, .. } => {
                    for item_id in item_ids {
                        ops.push(IndexOp::Delete {
                            tenant: t.clone(),
                            source: Source::Items,
                            id: item_id.clone(),
                        });
                    }
                }
                ChangeOp::ConversationDeleted { conversation_id } => {
                    ops.push(IndexOp::DeleteConversation {
                        tenant: t.clone(),
                        conversation_id: conversation_id.clone(),
                    })
                }
                ChangeOp::KvPut {
                    key,
                    json_object: Some(false),
                    ..
                } => {
                    // Not a JSON object: not searchable (removes an earlier version).
                    ops.push(IndexOp::Delete {
                        tenant: t.clone(),
                        source: Source::Memory,
                        id: key.clone(),
                    });
                }
                ChangeOp::KvPut { key, .. }
                | ChangeOp::KvDeleted { key }
                | ChangeOp::KvExpired { key } => {
                    let current = match self.store.kv_get(&scope, key).await {
                        Ok(entry) => memory_doc(tenant, &entry),
                        Err(StoreError::NotFound(_)) => None,
                        Err(err) => return Err(err.into()),
                    };
                    ops.push(match current {
                        Some(doc) => IndexOp::UpsertKeepDerived(doc),
                        None => IndexOp::Delete {
                            tenant: t.clone(),
                            source: Source::Memory,
                            id: key.clone(),
                        },
                    });
                }
                // An erasure removes the log's earlier entries about the user, so a tail that
                // was behind may never see their deletions: forget everything they own.
                ChangeOp::UserErased {} => {
                    if let Some(owner) = &e.owner {
                        ops.push(IndexOp::DeleteOwner {
                            tenant: t.clone(),
                            owner: owner.clone(),
                        });
                    }
                }
                // The conversation's deletion came first and removed its documents.
                ChangeOp::ItemsPurged { .. } => {}
                // Consent is not searchable content.
                ChangeOp::ConsentSet { .. } => {}
            }
        }
        Ok(ops)
    }

    /// Offers every item and memory value of `tenant` that still needs a built-in vector
    /// (as changes from log position `pos`), waiting for queue space: the backfill scan of
    /// the embedding pipeline.
    #[cfg_attr(not(feature = "embedder"), allow(dead_code))]
    pub(crate) async fn offer_tenant(
        &self,
        tenant: &TenantId,
        pos: u64,
        p: &Pipeline,
    ) -> Result<(), StoreError> {
        let scope = Scope::tenant(tenant.clone());
        let view = self.store.read_view().await?;
        let mut convs = view.conversations(&scope).await?;
        while let Some(rec) = next_row(&mut convs).await? {
            let mut ops = Vec::new();
            match push_items(&view, &scope, &rec, &mut ops).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            for doc in ops.iter().filter_map(embed_candidate) {
                p.offer_wait(doc, pos).await;
            }
        }
        let mut memory = view.memory(&scope, "").await?;
        while let Some(entry) = next_row(&mut memory).await? {
            if let Some(doc) = memory_doc(tenant, &entry) {
                p.offer_wait(&doc, pos).await;
            }
        }
        Ok(())
    }

    /// Waits until every write acknowledged so far for `tenant` is in the index; with
    /// [`Consistency::Strong`] (and an embedder) also until each such document has its
    /// built-in vector. Fails with [`IndexError::Behind`] after 10 s in all.
    pub async fn wait_current(
        &self,
        tenant: &TenantId,
        consistency: Consistency,
    ) -> Result<(), IndexError> {
        let target = self.store.change_log().acknowledged(tenant);
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.indexed(tenant) < target {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(IndexError::Behind);
            }
        }
        if consistency == Consistency::Strong {
            if let Some(p) = &self.embed {
                let mut rx = p.subscribe();
                while !p.ready(tenant.as_str(), target) {
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        return Err(IndexError::Behind);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether text queries of `tenant` can be embedded: `Ok(false)` without an embedder,
    /// [`IndexError::TextDimension`] when the tenant's vectors have another dimension than the
    /// model's.
    pub fn text_vectors(&self, tenant: &TenantId) -> Result<bool, IndexError> {
        let Some(p) = &self.embed else {
            return Ok(false);
        };
        match self.index.dimension(tenant.as_str()) {
            Some(d) if d != p.dimension() => Err(IndexError::TextDimension {
                stored: d,
                model: p.dimension(),
            }),
            _ => Ok(true),
        }
    }

    /// The built-in embedding of a query text (see [`SearchService::text_vectors`]); `None`
    /// without an embedder.
    pub async fn query_vector(&self, text: &str) -> Result<Option<Vec<f32>>, IndexError> {
        let Some(p) = self.embed.clone() else {
            return Ok(None);
        };
        let text = text.to_owned();
        let v = tokio::task::spawn_blocking(move || p.query_vector(&text))
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "embedding a query failed");
                IndexError::Embedding(e.to_string())
            })?;
        Ok(Some(v.as_ref().clone()))
    }

    /// Like [`SearchService::query_vector`], on the calling thread (for callers that are
    /// already off the async runtime, or plan once per query).
    pub fn query_vector_blocking(&self, text: &str) -> Result<Option<Vec<f32>>, IndexError> {
        let Some(p) = &self.embed else {
            return Ok(None);
        };
        let v = p.query_vector(text).map_err(|e| {
            tracing::error!(error = %e, "embedding a query failed");
            IndexError::Embedding(e.to_string())
        })?;
        Ok(Some(v.as_ref().clone()))
    }

    /// Refuses a vector whose dimension differs from the tenant's.
    pub fn check_vector(&self, tenant: &TenantId, v: &[f32]) -> Result<(), IndexError> {
        Ok(self.index.check_vector(tenant.as_str(), v)?)
    }

    /// Runs a search on a blocking thread. Call [`SearchService::wait_current`] first for
    /// read-your-writes.
    pub async fn search(&self, query: SearchQuery) -> Result<Vec<Hit>, IndexError> {
        let index = self.index.clone();
        Ok(tokio::task::spawn_blocking(move || index.search(&query)).await??)
    }
}

/// Appends an upsert for every item of a conversation as `view` holds it (nothing if the
/// view no longer has the conversation: `NotFound`).
async fn push_items(
    view: &ReadView,
    scope: &Scope,
    rec: &ConversationRecord,
    ops: &mut Vec<IndexOp>,
) -> Result<(), StoreError> {
    let mut items = view.items(scope, &rec.id).await?;
    while let Some(item) = next_row(&mut items).await? {
        ops.push(item_op(&scope.tenant, rec, &item));
    }
    Ok(())
}
