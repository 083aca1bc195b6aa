//! Public data types: documents, index operations, queries and hits.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::ann::Quantization;

/// Where a document comes from. Each source is searched separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Conversation items; `Doc::id` is the item id.
    Items,
    /// Key-value memory; `Doc::id` is the key.
    Memory,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Items => "items",
            Source::Memory => "memory",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Source::Items => 0,
            Source::Memory => 1,
        }
    }
}

/// One searchable document. `(tenant, source, id)` identifies it: upserting the same triple
/// replaces the previous version.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// Tenant the document belongs to. Searches never cross tenants.
    pub tenant: String,
    /// Conversation item or memory value.
    pub source: Source,
    /// Item id or KV key.
    pub id: String,
    /// End user who owns the document, if any.
    pub owner: Option<String>,
    /// Conversation the item belongs to, if any.
    pub conversation_id: Option<String>,
    /// Role of the item author (`user`, `assistant`, ...), matched exactly.
    pub role: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// String metadata, matched exactly by [`Filter::metadata`].
    pub metadata: BTreeMap<String, String>,
    /// Text indexed for BM25 search (may be empty).
    pub text: String,
    /// Embedding. Normalised to unit length on insert; must match the tenant's dimension.
    pub vector: Option<Vec<f32>>,
    /// When the document stops existing, in unix milliseconds (a memory value's TTL). From
    /// then on no search returns it or spends a `top_k` place on it, and the index drops it.
    pub expires_at_ms: Option<i64>,
}

/// A change to the index. Apply them through [`crate::SearchIndex::enqueue`].
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    /// Insert or replace a document.
    Upsert(Doc),
    /// Like [`IndexOp::Upsert`], except that a document without a vector keeps the derived
    /// vector (one attached by [`IndexOp::SetVector`]) of the version it replaces when both
    /// versions have the same text. For re-indexing a document whose vector is computed
    /// from its text, e.g. after a change of its metadata.
    UpsertKeepDerived(Doc),
    /// Attaches a vector derived from a document's text (a built-in embedding) to the live
    /// document, without re-indexing its text. Applied only if the document still exists,
    /// has no vector and its text still hashes to `text_hash` ([`crate::text_hash`]);
    /// otherwise it is a no-op, so a vector computed for a version that has since been
    /// replaced or deleted never lands. Validated like an upserted vector.
    SetVector {
        /// Tenant of the document.
        tenant: String,
        /// Source of the document.
        source: Source,
        /// Item id or KV key.
        id: String,
        /// [`crate::text_hash`] of the text the vector was computed from.
        text_hash: u64,
        /// The vector.
        vector: Vec<f32>,
    },
    /// Remove one document (no-op if absent).
    Delete {
        /// Tenant of the document.
        tenant: String,
        /// Source of the document.
        source: Source,
        /// Item id or KV key.
        id: String,
    },
    /// Remove every document of a conversation, from every source.
    DeleteConversation {
        /// Tenant of the conversation.
        tenant: String,
        /// The conversation.
        conversation_id: String,
    },
    /// Remove every document owned by `owner`, from every source.
    DeleteOwner {
        /// Tenant of the owner.
        tenant: String,
        /// The owner (end user).
        owner: String,
    },
    /// Remove every document of a tenant (before rebuilding it from the source of truth).
    DeleteTenant {
        /// The tenant.
        tenant: String,
    },
}

/// How a query is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Cosine similarity on the query vector.
    Vector,
    /// BM25 on the query text.
    Text,
    /// Reciprocal-rank fusion (k = 60) of vector and text results. With only one of text or
    /// vector it behaves as that mode alone.
    Hybrid,
}

/// Filters applied on top of the scope. All present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact role.
    pub role: Option<String>,
    /// Keep documents with `created_at >= created_after` (inclusive).
    pub created_after: Option<i64>,
    /// Keep documents with `created_at < created_before` (exclusive).
    pub created_before: Option<i64>,
    /// Every pair must be present in the document's metadata with exactly this value.
    pub metadata: BTreeMap<String, String>,
}

impl Filter {
    pub(crate) fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.created_after.is_none()
            && self.created_before.is_none()
            && self.metadata.is_empty()
    }
}

/// A search request. The scope (`tenant`, `owner`, `source`, `conversation_id`, `key_prefix`)
/// is always enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Tenant searched; required.
    pub tenant: String,
    /// When `Some`, only this owner's documents; `None` searches the whole tenant.
    pub owner: Option<String>,
    /// Which source to search.
    pub source: Source,
    /// When `Some`, only documents of this conversation.
    pub conversation_id: Option<String>,
    /// When `Some`, only documents whose id (KV key) starts with this prefix.
    pub key_prefix: Option<String>,
    /// Extra filters.
    pub filter: Filter,
    /// Vector, text or hybrid.
    pub mode: Mode,
    /// Query text. Words match by BM25; `"quoted phrases"` must appear as phrases. Never a
    /// syntax error: anything that is not a closed quote is plain words.
    pub text: Option<String>,
    /// Query embedding (normalised before use).
    pub vector: Option<Vec<f32>>,
    /// Number of hits wanted, `1..=SearchConfig::max_top_k`.
    pub top_k: usize,
}

impl SearchQuery {
    /// A query with no filters, owner, conversation or prefix.
    pub fn new(tenant: impl Into<String>, source: Source, mode: Mode, top_k: usize) -> Self {
        SearchQuery {
            tenant: tenant.into(),
            owner: None,
            source,
            conversation_id: None,
            key_prefix: None,
            filter: Filter::default(),
            mode,
            text: None,
            vector: None,
            top_k,
        }
    }
}

/// One result, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Item id or KV key.
    pub id: String,
    /// Conversation of the item, if any.
    pub conversation_id: Option<String>,
    /// Vector mode: cosine similarity. Text mode: BM25. Hybrid: fused RRF score.
    pub score: f32,
}

/// Settings of a [`crate::SearchIndex`].
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// Largest `top_k` accepted.
    pub max_top_k: usize,
    /// How long a search waits for earlier writes to be indexed before failing with
    /// [`crate::SearchError::Timeout`].
    pub wait_timeout: Duration,
    /// A vector scope (tenant and source) with more vectors than this gets an ANN index; scopes
    /// at or below it, and every per-owner or per-conversation scope, are searched exactly.
    pub ann_threshold: usize,
    /// HNSW search breadth (`ef`) of ANN queries; the `max(ef, top_k)` candidates found are all
    /// re-scored exactly.
    pub ann_expansion_search: usize,
    /// How vectors are stored inside the ANN graph (candidates are always re-scored exactly
    /// from the f32 copy).
    pub ann_quantization: Quantization,
    /// Vector dimension per tenant, fixed up front. Other tenants take the dimension of their
    /// first vector.
    pub dimension_overrides: HashMap<String, usize>,
    /// Memory budget of the full-text writer, bytes (at least 15 MB).
    pub text_writer_memory: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            max_top_k: 1000,
            wait_timeout: Duration::from_secs(10),
            ann_threshold: 20_000,
            ann_expansion_search: 128,
            ann_quantization: Quantization::I8,
            dimension_overrides: HashMap::new(),
            text_writer_memory: 50_000_000,
        }
    }
}

/// Counters of one tenant, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Live documents (all sources).
    pub docs: usize,
    /// Live documents with a vector.
    pub vectors: usize,
    /// Vectors currently in an ANN index.
    pub ann_indexed: usize,
    /// Vectors of ANN-indexed scopes not yet in the ANN index (searched exactly meanwhile).
    pub ann_pending: usize,
    /// Removed vectors whose nodes are still in a serving ANN graph (walked through, never
    /// returned) until an add reuses them or the graph is rebuilt.
    pub ann_removed: usize,
    /// ANN graphs being rebuilt beside the serving one because of removed nodes.
    pub ann_rebuilds: usize,
}
