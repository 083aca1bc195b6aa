//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! attributes and the request types they parse; served at `GET /openapi.json` and checked in
//! as `docs/openapi.json`.
//!
//! Response bodies are built as JSON in the handlers; the types below describe them. The test
//! suite checks every answer against this document (schemathesis), so a type that drifted from
//! its handler fails there.

#![allow(dead_code)] // The response types exist for their schemas; nothing constructs them.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, ToSchema};

/// Tag of the OpenAI Conversations API routes.
pub const CONVERSATIONS: &str = "conversations";
/// Tag of the key-value memory routes.
pub const MEMORY: &str = "memory";
/// Tag of search, SQL and the change feed.
pub const QUERY: &str = "query";
/// Tag of the administration routes.
pub const ADMIN: &str = "admin";
/// Tag of health, metrics and this document.
pub const OPERATIONS: &str = "operations";

/// Every error answer: OpenAI's error shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// The body of an error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A human-readable message.
    pub message: String,
    /// The error class: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `conflict_error`, `precondition_failed`, `service_unavailable`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault (`items[2].role`), if any.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_value`, `body_too_large`, `sql_timeout`, …), if any.
    pub code: Option<String>,
}

/// A conversation.
#[derive(Serialize, ToSchema)]
pub struct Conversation {
    /// `conv_…`.
    pub id: String,
    /// Always `conversation`.
    pub object: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Up to 16 string values.
    pub metadata: BTreeMap<String, String>,
}

/// The answer to deleting a conversation.
#[derive(Serialize, ToSchema)]
pub struct ConversationDeleted {
    /// The conversation's id.
    pub id: String,
    /// Always `conversation.deleted`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// A conversation item as stored: any item of OpenAI's `ConversationItem` union (messages,
/// function calls and their outputs, reasoning, …) with its `id` and `type`.
#[derive(Serialize, ToSchema)]
pub struct Item {
    /// The item's id.
    pub id: String,
    /// `message`, `function_call`, `function_call_output`, `reasoning`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// A page of items.
#[derive(Serialize, ToSchema)]
pub struct ItemList {
    /// Always `list`.
    pub object: String,
    /// The items.
    pub data: Vec<Item>,
    /// The first item's id; null when `data` is empty.
    pub first_id: Option<String>,
    /// The last item's id; null when `data` is empty.
    pub last_id: Option<String>,
    /// Whether more items follow the page.
    pub has_more: bool,
}

/// The answer to a memory write.
#[derive(Serialize, ToSchema)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// The new value's ETag (also in the `ETag` header).
    pub etag: String,
    /// The value's size in bytes.
    pub size: u64,
}

/// The answer to a memory delete.
#[derive(Serialize, ToSchema)]
pub struct KvDeleted {
    /// The key.
    pub key: String,
    /// Always true.
    pub deleted: bool,
}

/// One key of a listing.
#[derive(Serialize, ToSchema)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value's size in bytes.
    pub size: u64,
    /// The value's ETag.
    pub etag: String,
    /// The value's media type.
    pub content_type: String,
    /// Last write, Unix seconds.
    pub updated_at: i64,
    /// Expiry, Unix seconds; null without a TTL.
    pub expires_at: Option<i64>,
}

/// A page of keys.
#[derive(Serialize, ToSchema)]
pub struct KvList {
    /// Always `list`.
    pub object: String,
    /// The keys, in byte order.
    pub data: Vec<KvEntry>,
    /// Whether more keys follow.
    pub has_more: bool,
    /// The `after` of the next page; null at the end.
    pub next_after: Option<String>,
}

/// The outcome of one operation of a batch.
#[derive(Serialize, ToSchema)]
pub struct KvBatchResult {
    /// The key.
    pub key: String,
    /// The new ETag of a put; null for a delete.
    pub etag: Option<String>,
    /// Whether the operation deleted the key.
    pub deleted: bool,
}

/// The answer to a batch.
#[derive(Serialize, ToSchema)]
pub struct KvBatchResponse {
    /// Always `list`.
    pub object: String,
    /// One result per operation, in order.
    pub data: Vec<KvBatchResult>,
}

/// One search hit: an item (`source: items`) or a memory value (`source: memory`).
#[derive(Serialize, ToSchema)]
pub struct SearchResult {
    /// Always `search.result`.
    pub object: String,
    /// Relevance: cosine similarity (vector), BM25 (text) or reciprocal-rank fusion (hybrid).
    pub score: f64,
    /// The item's id (items).
    pub item_id: Option<String>,
    /// The item's conversation (items).
    pub conversation_id: Option<String>,
    /// The item (items).
    pub item: Option<Item>,
    /// The key (memory).
    pub key: Option<String>,
    /// The JSON value without its `embedding` (memory).
    pub value: Option<Value>,
}

/// Search hits, best first.
#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    /// Always `list`.
    pub object: String,
    /// The hits.
    pub data: Vec<SearchResult>,
}

/// A column of a SQL answer.
#[derive(Serialize, ToSchema)]
pub struct SqlColumn {
    /// The column's name.
    pub name: String,
    /// Its PostgreSQL type name (`text`, `bigint`, `timestamptz`, …).
    #[serde(rename = "type")]
    pub kind: String,
}

/// A SQL answer.
#[derive(Serialize, ToSchema)]
pub struct SqlResult {
    /// Always `sql.result`.
    pub object: String,
    /// The columns.
    pub columns: Vec<SqlColumn>,
    /// The rows, each an array of cells in column order.
    pub rows: Vec<Vec<Value>>,
    /// Whether rows past `--sql-max-rows` were left out.
    pub truncated: bool,
}

/// One change-feed event.
#[derive(Serialize, ToSchema)]
pub struct ChangeEvent {
    /// The event's cursor (pass as `after` to continue after it).
    pub id: String,
    /// Its position in the tenant's log.
    pub seq: u64,
    /// Commit time, Unix seconds.
    pub at: i64,
    /// `conversation.created`, `item.created`, `memory.put`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// A page of the change feed.
#[derive(Serialize, ToSchema)]
pub struct ChangePage {
    /// Always `list`.
    pub object: String,
    /// The events, oldest first.
    pub data: Vec<ChangeEvent>,
    /// Whether more events are already available.
    pub has_more: bool,
    /// The cursor to continue from (pass as `after`).
    pub next_cursor: String,
}

/// A user's research consent.
#[derive(Serialize, ToSchema)]
pub struct Consent {
    /// Always `user.consent`.
    pub object: String,
    /// The user.
    pub user: String,
    /// Whether the user's history may be exported for research.
    pub research: bool,
    /// Whether a record exists (else the tenant policy decides).
    pub explicit: bool,
    /// The tenant policy: `opt-in` or `opt-out`.
    pub policy: String,
    /// When the record was written, Unix seconds; null without one.
    pub updated_at: Option<i64>,
}

/// The answer to erasing a user.
#[derive(Serialize, ToSchema)]
pub struct UserErased {
    /// Always `user.erased`.
    pub object: String,
    /// The user.
    pub user: String,
    /// Conversations deleted.
    pub conversations_deleted: u64,
    /// Memory keys deleted.
    pub memory_keys_deleted: u64,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Always `list`.
    pub object: String,
    /// The entries, oldest first.
    pub data: Vec<BTreeMap<String, Value>>,
    /// Whether more entries follow.
    pub has_more: bool,
    /// The `after` of the next page; null at the end.
    pub next_after: Option<u64>,
}

/// A research export job.
#[derive(Serialize, ToSchema)]
pub struct ExportJob {
    /// The job's id.
    pub id: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` while the store is unavailable.
    pub status: String,
}

/// A memory value: any bytes (its media type is the stored `Content-Type`).
pub struct AnyBytes;

impl utoipa::PartialSchema for AnyBytes {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some("Any bytes, at most 65,536"))
            .into()
    }
}

impl ToSchema for AnyBytes {}

/// Statuses every `/v1` route may answer with an error, besides those its operation lists.
const COMMON_ERRORS: [(&str, &str); 6] = [
    ("400", "Invalid request: malformed JSON, wrong types, bad ids, limits exceeded"),
    ("401", "Missing or invalid credentials"),
    ("403", "The credentials lack the route's permission, or the write is outside the caller's space"),
    ("404", "Unknown, deleted, or outside the caller's scope"),
    ("413", "Body over the route's limit; nothing is stored"),
    ("503", "The object store (or the signing keys) unavailable within the timeout; a write's outcome is unknown"),
];

/// Adds the bearer security scheme and the shared error answers to every `/v1` operation.
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT (`--auth jwt`) or an API key (`--auth keys`); with `--auth none` \
                         (loopback only) no credential is needed and `X-Mnemo-User` is trusted.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for op in operations(item) {
                add_errors(op);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorResponse")))
                    .build(),
            )
            .build(),
    )
}

fn add_errors(op: &mut Operation) {
    for (status, description) in COMMON_ERRORS {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description));
    }
    op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
}

/// A documented error answer with the shared error shape, for operations' `responses(...)`.
pub fn error(description: &str) -> RefOr<Response> {
    error_response(description)
}
