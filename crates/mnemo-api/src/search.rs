//! Search: the index service that keeps [`mnemo_search::SearchIndex`] in step with the store,
//! and the `POST /v1/search` handler.
//!
//! The index is derived data. It is built from the store when the server starts, then kept
//! current by tailing each tenant's change log: for every logged change the service reads the
//! *current* state of the object (item, conversation, memory key) and upserts or deletes its
//! document. Reading current state makes the result independent of the order in which
//! concurrent writes were acknowledged: after the tail has passed a log position, the index
//! equals the store for everything changed up to it. A search first waits until the tail has
//! passed the tenant's newest acknowledged position, so every acknowledged write is visible
//! (read-your-writes) and deleted data never comes back.
//!
//! With the built-in embedder ([`crate::embed`]), documents without a client vector are
//! offered to the embedding pipeline once their text is indexed; their vectors arrive in the
//! background. A search with `"consistency": "strong"` also waits for those.

use crate::auth::{kv_owner, need, Caller};
use crate::embed::{EmbedSetupError, EmbedderConfig, Pipeline};
use crate::error::{ApiError, ApiResult};
use crate::extract::json_body;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mnemo_search::{
    Doc, Filter, IndexOp, Mode, SearchConfig, SearchError, SearchIndex, SearchQuery, Source,
};
use mnemo_storage::{
    ChangeEntry, ConversationRecord, KvEntry, Order, Scope, Store, StoreError, StoredItem, TenantId,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod snapshot;
pub use snapshot::SnapshotOptions;

/// Largest `top_k`.
pub const MAX_TOP_K: usize = 1000;
/// Largest embedding accepted, in dimensions.
pub const MAX_DIMENSIONS: usize = 4096;
/// How long a search waits for earlier writes to be indexed.
const WAIT: Duration = Duration::from_secs(10);
const LOG_BATCH: usize = 1000;
const APPLY_CHUNK: usize = 2000;

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
}

/// Settings of the search service.
#[derive(Default)]
pub struct SearchOptions {
    /// The built-in embedder: embeds documents without a client vector, and query texts.
    pub embedder: Option<EmbedderConfig>,
    /// Index snapshots in the store's object store (default: off).
    pub snapshots: SnapshotOptions,
}

/// Why the search service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The built-in embedder could not be set up.
    #[error(transparent)]
    Embedder(#[from] EmbedSetupError),
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

fn search_error(e: SearchError) -> ApiError {
    match e {
        SearchError::InvalidVector(_)
        | SearchError::DimensionMismatch { .. }
        | SearchError::EmptyQuery(_)
        | SearchError::TopKOutOfRange { .. } => ApiError::invalid(e.to_string()),
        SearchError::Timeout => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the search index did not catch up with earlier writes in time; retry later",
        )
        .with_code("index_behind"),
        SearchError::Internal(m) => {
            tracing::error!(error = %m, "search index failure");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            )
        }
        // `SearchError` may grow; anything new is a server-side failure until mapped.
        #[allow(unreachable_patterns)]
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        ),
    }
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Collects the searchable text of a JSON value: every string under the keys that carry
/// content in OpenAI items (`text`, `content`, `arguments`, `output`, `refusal`,
/// `transcript`, `summary`), or every string of a memory object except `embedding`.
fn collect_text(v: &Value, all: bool, out: &mut String) {
    match v {
        Value::String(s) if all => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, all, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == "embedding" {
                    continue;
                }
                let content = matches!(
                    k.as_str(),
                    "text"
                        | "content"
                        | "arguments"
                        | "output"
                        | "refusal"
                        | "transcript"
                        | "summary"
                );
                collect_text(x, all || content, out);
            }
        }
        _ => {}
    }
}

fn string_metadata(m: &Map<String, Value>) -> BTreeMap<String, String> {
    m.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

/// The search document of a stored item.
pub fn item_doc(tenant: &TenantId, rec: &ConversationRecord, item: &StoredItem) -> Doc {
    let v: Value = serde_json::from_slice(&item.json).unwrap_or(Value::Null);
    let mut text = String::new();
    collect_text(&v, false, &mut text);
    Doc {
        tenant: tenant.as_str().to_owned(),
        source: Source::Items,
        id: item.id.clone(),
        owner: rec.owner.clone(),
        conversation_id: Some(rec.id.clone()),
        role: v.get("role").and_then(Value::as_str).map(str::to_owned),
        created_at: item.created_at_ms / 1000,
        metadata: string_metadata(&rec.metadata),
        text,
        vector: item.vector.clone(),
        expires_at_ms: None,
    }
}

/// Parses a client-supplied embedding: 1–4096 finite numbers (as f32).
pub fn parse_embedding(v: &Value, param: &str) -> ApiResult<Vec<f32>> {
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::invalid_param(param, "embedding must be an array of numbers"))?;
    if arr.is_empty() || arr.len() > MAX_DIMENSIONS {
        return Err(ApiError::invalid_param(
            param,
            format!("embedding must have 1-{MAX_DIMENSIONS} numbers"),
        ));
    }
    arr.iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    ApiError::invalid_param(param, "embedding values must be finite numbers")
                })
        })
        .collect()
}

/// The search document of a memory value, if it is a JSON object (other values are not
/// searchable). Its `embedding` field, if any, is the vector; it expires with the value.
pub fn memory_doc(tenant: &TenantId, entry: &KvEntry) -> Option<Doc> {
    let (key, rec) = (entry.key.as_str(), &entry.record);
    let v: Value = serde_json::from_slice(&rec.value).ok()?;
    let obj = v.as_object()?;
    let vector = obj
        .get("embedding")
        .and_then(|e| parse_embedding(e, "embedding").ok());
    let mut text = String::new();
    collect_text(&v, true, &mut text);
    Some(Doc {
        tenant: tenant.as_str().to_owned(),
        source: Source::Memory,
        id: key.to_owned(),
        owner: kv_owner(key).filter(|o| !o.is_empty()).map(str::to_owned),
        conversation_id: None,
        role: None,
        created_at: rec.updated_at_ms / 1000,
        metadata: BTreeMap::new(),
        text,
        vector,
        expires_at_ms: entry.expires_at_ms,
    })
}

impl SearchService {
    /// Builds the index from the store (every tenant, every item and memory key), then
    /// starts tailing the change log. Returns once the index reflects the store. No snapshots.
    pub async fn start(store: Arc<Store>) -> Result<Arc<Self>, StoreError> {
        match Self::start_with(store, SearchOptions::default()).await {
            Ok(svc) => Ok(svc),
            Err(StartError::Store(e)) => Err(e),
            Err(e) => Err(internal(e)),
        }
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
    ) -> Result<Arc<Self>, StartError> {
        let cfg = SearchConfig {
            max_top_k: MAX_TOP_K,
            wait_timeout: WAIT,
            ..SearchConfig::default()
        };
        let started = Instant::now();
        let snapshots = snapshot::Snapshots::new(store.engine().location(), &opts.snapshots);
        let loaded = match &snapshots {
            Some(s) => s.load(&cfg).await,
            None => None,
        };
        let (index, header) = match loaded {
            Some(l) => (l.index, Some(l.header)),
            None => (SearchIndex::new(cfg).map_err(internal)?, None),
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
        });
        metrics::gauge!("mnemo_search_restored_docs").set(0.0);
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
        tokio::spawn(async move { tail.tail().await });
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

    /// Whether the built-in embedder is enabled.
    pub fn has_embedder(&self) -> bool {
        self.embed.is_some()
    }

    /// The index (for vector validation).
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// Applies `ops` to the index, then offers the documents among them that need a
    /// built-in vector to the embedder (as changes from log position `pos`; 0 at start-up).
    async fn apply(&self, ops: Vec<IndexOp>, pos: u64) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let candidates: Vec<Doc> = match &self.embed {
            Some(_) => ops.iter().filter_map(embed_candidate).cloned().collect(),
            None => Vec::new(),
        };
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.apply(ops))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        if let Some(p) = &self.embed {
            for doc in &candidates {
                p.offer(doc, pos);
            }
        }
        Ok(())
    }

    /// Indexes every conversation item and memory key of `tenants` and marks the log
    /// position read before each tenant's scan as indexed. Returns the documents indexed.
    async fn rebuild(&self, tenants: Vec<TenantId>) -> Result<usize, StoreError> {
        let mut total = 0;
        for tenant in tenants {
            // Changes after this position are replayed by the tail, so none is missed.
            let head = self
                .store
                .change_log()
                .newest(self.store.engine(), &tenant)
                .await?;
            let scope = Scope::tenant(tenant.clone());
            let mut ops = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let recs = self
                    .store
                    .scan_conversations(&tenant, after.as_deref(), 256)
                    .await?;
                let Some(last) = recs.last() else { break };
                after = Some(last.id.clone());
                for rec in &recs {
                    self.push_conversation_items(&scope, rec, &mut ops).await?;
                    if ops.len() >= APPLY_CHUNK {
                        total += ops.len();
                        self.apply(std::mem::take(&mut ops), 0).await?;
                    }
                }
            }
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .kv_list(&scope, "", after.as_deref(), 1000)
                    .await?;
                for e in &page.entries {
                    if let Some(doc) = memory_doc(&tenant, e) {
                        ops.push(IndexOp::UpsertKeepDerived(doc));
                    }
                }
                after = page.entries.last().map(|e| e.key.clone());
                if ops.len() >= APPLY_CHUNK {
                    total += ops.len();
                    self.apply(std::mem::take(&mut ops), 0).await?;
                }
                if !page.has_more {
                    break;
                }
            }
            total += ops.len();
            self.apply(ops, 0).await?;
            self.set_indexed(&tenant, head);
        }
        Ok(total)
    }

    fn indexed(&self, tenant: &TenantId) -> u64 {
        let m = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
        m.get(tenant).copied().unwrap_or(0)
    }

    fn set_indexed(&self, tenant: &TenantId, seq: u64) {
        {
            let mut m = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
            let e = m.entry(tenant.clone()).or_insert(0);
            *e = (*e).max(seq);
        }
        self.progress.send_modify(|n| *n += 1);
    }

    async fn tail(self: Arc<Self>) {
        let log = self.store.change_log();
        // Tenants whose indexing failed, retried next round.
        let mut retry: Vec<(TenantId, u64)> = Vec::new();
        loop {
            // A snapshot waits for this round, so its positions are all applied.
            let round = self.tail_round().await;
            let mut todo = std::mem::take(&mut retry);
            todo.extend(log.take_acknowledged());
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
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                tokio::select! {
                    _ = log.changed() => {}
                    _ = self.snapshot_due() => {}
                }
            }
        }
    }

    /// Applies every logged change of `tenant` up to `target`.
    async fn catch_up(&self, tenant: &TenantId, target: u64) -> Result<(), StoreError> {
        let log = self.store.change_log();
        let mut from = self.indexed(tenant);
        while from < target {
            let entries = log
                .read(self.store.engine(), tenant, from, LOG_BATCH)
                .await?;
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

    /// Appends an upsert for every item of a conversation (none if it was deleted meanwhile).
    async fn push_conversation_items(
        &self,
        scope: &Scope,
        rec: &ConversationRecord,
        ops: &mut Vec<IndexOp>,
    ) -> Result<(), StoreError> {
        let mut cursor: Option<String> = None;
        loop {
            let page = match self
                .store
                .list_items(scope, &rec.id, cursor.as_deref(), 100, Order::Asc)
                .await
            {
                Ok(p) => p,
                Err(StoreError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            for item in &page.items {
                ops.push(IndexOp::UpsertKeepDerived(item_doc(
                    &scope.tenant,
                    rec,
                    item,
                )));
            }
            cursor = page.items.last().map(|i| i.id.clone());
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Turns log entries into index operations by reading the current state of what changed.
    async fn resolve(
        &self,
        tenant: &TenantId,
        entries: &[ChangeEntry],
    ) -> Result<Vec<IndexOp>, StoreError> {
        let scope = Scope::tenant(tenant.clone());
        let t = tenant.as_str().to_owned();
        let mut convs: HashMap<String, Option<ConversationRecord>> = HashMap::new();
        let mut ops = Vec::new();
        for e in entries {
            let conv_id = e.conversation_id.clone().unwrap_or_default();
            match e.op.as_str() {
                "conversation.created" | "item.added" | "conversation.updated" => {
                    if !convs.contains_key(&conv_id) {
                        let rec = match self.store.get_conversation(&scope, &conv_id).await {
                            Ok(r) => Some(r),
                            Err(StoreError::NotFound(_)) => None,
                            Err(err) => return Err(err),
                        };
                        convs.insert(conv_id.clone(), rec);
                    }
                    let Some(rec) = convs.get(&conv_id).cloned().flatten() else {
                        ops.push(IndexOp::DeleteConversation {
                            tenant: t.clone(),
                            conversation_id: conv_id,
                        });
                        continue;
                    };
                    if e.op == "conversation.updated" {
                        // Metadata is a filter of every item: re-index them all.
                        self.push_conversation_items(&scope, &rec, &mut ops).await?;
                        continue;
                    }
                    for item_id in &e.item_ids {
                        match self.store.get_item(&scope, &conv_id, item_id).await {
                            Ok(item) => {
                                ops.push(IndexOp::UpsertKeepDerived(item_doc(tenant, &rec, &item)))
                            }
                            Err(StoreError::NotFound(_)) => ops.push(IndexOp::Delete {
                                tenant: t.clone(),
                                source: Source::Items,
                                id: item_id.clone(),
                            }),
                            Err(err) => return Err(err),
                        }
                    }
                }
                "item.deleted" => {
                    for item_id in &e.item_ids {
                        ops.push(IndexOp::Delete {
                            tenant: t.clone(),
                            source: Source::Items,
                            id: item_id.clone(),
                        });
                    }
                }
                "conversation.deleted" => ops.push(IndexOp::DeleteConversation {
                    tenant: t.clone(),
                    conversation_id: conv_id,
                }),
                "kv.put" | "kv.deleted" => {
                    let Some(key) = &e.key else { continue };
                    if e.op == "kv.put" && e.json_object == Some(false) {
                        // Not a JSON object: not searchable (removes an earlier version).
                        ops.push(IndexOp::Delete {
                            tenant: t.clone(),
                            source: Source::Memory,
                            id: key.clone(),
                        });
                        continue;
                    }
                    let current = match self.store.kv_get(&scope, key).await {
                        Ok(entry) => memory_doc(tenant, &entry),
                        Err(StoreError::NotFound(_)) => None,
                        Err(err) => return Err(err),
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
                other => tracing::debug!(op = other, "change not indexed"),
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
        let mut after: Option<String> = None;
        loop {
            let recs = self
                .store
                .scan_conversations(tenant, after.as_deref(), 256)
                .await?;
            let Some(last) = recs.last() else { break };
            after = Some(last.id.clone());
            for rec in &recs {
                let mut ops = Vec::new();
                self.push_conversation_items(&scope, rec, &mut ops).await?;
                for doc in ops.iter().filter_map(embed_candidate) {
                    p.offer_wait(doc, pos).await;
                }
            }
        }
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .kv_list(&scope, "", after.as_deref(), 1000)
                .await?;
            for e in &page.entries {
                if let Some(doc) = memory_doc(tenant, e) {
                    p.offer_wait(&doc, pos).await;
                }
            }
            after = page.entries.last().map(|e| e.key.clone());
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Waits until every write acknowledged so far for `tenant` is in the index; with
    /// [`Consistency::Strong`] (and an embedder) also until each such document has its
    /// built-in vector. Fails with 503 `index_behind` after 10 s in all.
    pub async fn wait_current(&self, tenant: &TenantId, consistency: Consistency) -> ApiResult<()> {
        let target = self.store.change_log().acknowledged(tenant);
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.indexed(tenant) < target {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(search_error(SearchError::Timeout));
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
                        return Err(search_error(SearchError::Timeout));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether text queries of `tenant` can be embedded: `Ok(false)` without an embedder,
    /// 400 when the tenant's vectors have another dimension than the model's.
    fn text_vectors(&self, tenant: &TenantId) -> ApiResult<bool> {
        let Some(p) = &self.embed else {
            return Ok(false);
        };
        match self.index.dimension(tenant.as_str()) {
            Some(d) if d != p.dimension() => Err(ApiError::invalid_param(
                "query",
                format!(
                    "this tenant's vectors have {d} dimensions but the server's built-in \
                     embedder makes {}-dimensional vectors, so text cannot be searched by \
                     vector here: pass a `vector` of {d} numbers, or use mode text",
                    p.dimension()
                ),
            )),
            _ => Ok(true),
        }
    }

    /// The built-in embedding of a query text (see [`SearchService::text_vectors`]).
    async fn query_vector(&self, text: &str) -> ApiResult<Option<Vec<f32>>> {
        let Some(p) = self.embed.clone() else {
            return Ok(None);
        };
        let text = text.to_owned();
        let v = tokio::task::spawn_blocking(move || p.query_vector(&text))
            .await
            .map_err(|e| ApiError::from(internal(e)))?
            .map_err(|e| {
                tracing::error!(error = %e, "embedding a query failed");
                ApiError::from(internal(e))
            })?;
        Ok(Some(v.as_ref().clone()))
    }

    /// Refuses (400) an embedding whose dimension differs from the tenant's.
    pub fn check_vector(&self, tenant: &TenantId, v: &[f32], param: &str) -> ApiResult<()> {
        self.index
            .check_vector(tenant.as_str(), v)
            .map_err(|e| search_error(e).with_param(param))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScopeBody {
    conversation_id: Option<String>,
    prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    role: Option<String>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    query: Option<String>,
    vector: Option<Value>,
    mode: Option<String>,
    #[serde(default)]
    scope: ScopeBody,
    #[serde(default)]
    filter: FilterBody,
    source: Option<String>,
    top_k: Option<u64>,
    consistency: Option<String>,
}

/// `POST /v1/search`: vector, full-text or hybrid search within the caller's scope.
pub async fn search(
    State(st): State<AppState>,
    caller: Caller<need::Search>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let Some(svc) = st.search.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "search is not enabled on this server",
        ));
    };
    let b: SearchBody = json_body(&headers, body).await?;
    let tenant = caller.scope.tenant.clone();
    let mut vector = b
        .vector
        .as_ref()
        .map(|v| parse_embedding(v, "vector"))
        .transpose()?;
    if let Some(v) = &vector {
        if v.iter().all(|x| *x == 0.0) {
            return Err(ApiError::invalid_param("vector", "vector must not be zero"));
        }
    }
    if let (Some(v), Some(d)) = (&vector, svc.index.dimension(tenant.as_str())) {
        // A query vector is checked against the tenant's dimension but never fixes it: only
        // stored vectors do (a query must not decide what the built-in embedder may store).
        if v.len() != d {
            return Err(search_error(SearchError::DimensionMismatch {
                expected: d,
                got: v.len(),
            })
            .with_param("vector"));
        }
    }
    let mode = match b.mode.as_deref() {
        Some("vector") => Mode::Vector,
        Some("text") => Mode::Text,
        Some("hybrid") => Mode::Hybrid,
        None if vector.is_some() && b.query.is_none() => Mode::Vector,
        None if vector.is_none() => Mode::Text,
        None => Mode::Hybrid,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "mode",
                "mode must be vector, text or hybrid",
            ))
        }
    };
    let source = match b.source.as_deref() {
        None | Some("items") => Source::Items,
        Some("memory") => Source::Memory,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "source",
                "source must be items or memory",
            ))
        }
    };
    let consistency = match b.consistency.as_deref() {
        None | Some("eventual") | Some("default") => Consistency::Eventual,
        Some("strong") => Consistency::Strong,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "consistency",
                "consistency must be eventual or strong",
            ))
        }
    };
    let top_k = b.top_k.unwrap_or(10);
    if top_k == 0 || top_k > MAX_TOP_K as u64 {
        return Err(ApiError::invalid_param(
            "top_k",
            format!("top_k must be 1-{MAX_TOP_K}"),
        ));
    }
    if let Some(q) = &b.query {
        if q.trim().is_empty() {
            return Err(ApiError::invalid_param("query", "query must not be empty"));
        }
    }
    // Text-only vector and hybrid queries: the built-in embedder turns the text into the
    // query vector. A tenant whose vectors have another dimension gets 400 in vector mode;
    // hybrid mode then ranks by text alone, as without an embedder.
    if let (None, Some(text), Mode::Vector | Mode::Hybrid) = (&vector, &b.query, mode) {
        match svc.text_vectors(&tenant) {
            Ok(true) => vector = svc.query_vector(text).await?,
            Ok(false) => {}
            Err(e) if mode == Mode::Vector => return Err(e),
            Err(_) => {}
        }
    }
    if mode == Mode::Vector && vector.is_none() {
        return Err(ApiError::invalid_param(
            "vector",
            if svc.has_embedder() {
                "mode vector needs `vector` or `query`"
            } else {
                "mode vector needs `vector` (this server has no built-in embedder to embed `query`)"
            },
        ));
    }
    let q = SearchQuery {
        tenant: tenant.as_str().to_owned(),
        owner: caller.scope.user.clone(),
        source,
        conversation_id: b.scope.conversation_id.clone(),
        key_prefix: b.scope.prefix.clone(),
        filter: Filter {
            role: b.filter.role,
            created_after: b.filter.created_after,
            created_before: b.filter.created_before,
            metadata: b.filter.metadata,
        },
        mode,
        text: b.query,
        vector,
        top_k: top_k as usize,
    };
    svc.wait_current(&tenant, consistency).await?;
    let index = svc.index.clone();
    let hits = tokio::task::spawn_blocking(move || index.search(&q))
        .await
        .map_err(|e| ApiError::from(internal(e)))?
        .map_err(search_error)?;
    let mut data = Vec::with_capacity(hits.len());
    for h in hits {
        match source {
            Source::Items => {
                let conv = h.conversation_id.clone().unwrap_or_default();
                match st.store.get_item(&caller.scope, &conv, &h.id).await {
                    Ok(item) => {
                        let item_json: Value =
                            serde_json::from_slice(&item.json).unwrap_or(Value::Null);
                        data.push(json!({
                            "object": "search.result",
                            "item_id": h.id,
                            "conversation_id": conv,
                            "score": h.score,
                            "item": item_json,
                        }));
                    }
                    // Deleted (or out of scope) since it was indexed: not a result.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Source::Memory => match st.store.kv_get(&caller.scope, &h.id).await {
                Ok(entry) => {
                    let mut value: Value =
                        serde_json::from_slice(&entry.record.value).unwrap_or(Value::Null);
                    if let Some(o) = value.as_object_mut() {
                        o.remove("embedding");
                    }
                    data.push(json!({
                        "object": "search.result",
                        "key": h.id,
                        "score": h.score,
                        "value": value,
                    }));
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}
