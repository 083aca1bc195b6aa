//! Handlers of the OpenAI Conversations API (`/v1/conversations…`).

use crate::auth::{need, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_body, limit_param, path, query_pairs};
use crate::AppState;
use mnemo_storage::items::parse_items;
use std::borrow::Borrow;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mnemo_storage::{ConversationRecord, NewItem, Order, StoredItem};
use serde::Deserialize;
use serde_json::{json, Map, Value};

const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// The body of `POST /v1/conversations`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateConversation)]
struct CreateBody {
    /// Up to 16 keys (at most 64 characters) with string values (at most 512 characters).
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    metadata: Option<Map<String, Value>>,
    /// Up to 20 initial items (any item of OpenAI's `ResponseInputItemParam` union).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    items: Option<Vec<Value>>,
}

/// The body of `POST /v1/conversations/{id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateConversation)]
struct UpdateBody {
    /// The new metadata (replaces the old).
    #[schema(value_type = BTreeMap<String, String>)]
    metadata: Option<Map<String, Value>>,
}

/// The body of `POST /v1/conversations/{id}/items`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = AddItems)]
struct ItemsBody {
    /// 1–20 items (any item of OpenAI's `ResponseInputItemParam` union), appended atomically.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 20)]
    items: Vec<Value>,
}

fn check_metadata(m: Option<Map<String, Value>>) -> ApiResult<Map<String, Value>> {
    let m = m.unwrap_or_default();
    if m.len() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid_param(
            "metadata",
            format!("metadata has at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (k, v) in &m {
        if k.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(ApiError::invalid_param(
                "metadata",
                format!("metadata keys have at most {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        match v {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
            Value::String(_) => {
                return Err(ApiError::invalid_param(
                    format!("metadata.{k}"),
                    format!("metadata values have at most {MAX_METADATA_VALUE_CHARS} characters"),
                ))
            }
            _ => {
                return Err(ApiError::invalid_param(
                    format!("metadata.{k}"),
                    "metadata values must be strings",
                ))
            }
        }
    }
    Ok(m)
}

pub(crate) fn conversation_json(rec: &ConversationRecord) -> Value {
    json!({
        "id": rec.id,
        "object": "conversation",
        "created_at": rec.created_at,
        "metadata": rec.metadata,
    })
}

/// A list object built from stored item JSON without re-parsing it. Takes items or shared
/// items (`Arc<StoredItem>`, as pages served from the tail cache hold them).
fn item_list<I: Borrow<StoredItem>>(items: &[I], has_more: bool) -> Response {
    let size: usize = items.iter().map(|i| i.borrow().json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 160);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&it.borrow().json);
    }
    out.extend_from_slice(b"],");
    let ids = json!({
        "first_id": items.first().map(|i| i.borrow().id.as_str()),
        "last_id": items.last().map(|i| i.borrow().id.as_str()),
        "has_more": has_more,
    })
    .to_string();
    out.extend_from_slice(&ids.as_bytes()[1..]);
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// Refuses (400) embeddings whose dimension differs from the tenant's, before anything is
/// written.
fn check_vectors(st: &AppState, scope: &mnemo_storage::Scope, items: &[NewItem]) -> ApiResult<()> {
    let Some(search) = &st.search else {
        return Ok(());
    };
    for (i, it) in items.iter().enumerate() {
        if let Some(v) = &it.vector {
            search
                .check_vector(&scope.tenant, v)
                .map_err(|e| ApiError::from(e).with_param(format!("items[{i}].embedding")))?;
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/conversations", tag = crate::openapi::CONVERSATIONS,
    operation_id = "createConversation", summary = "Create a conversation, optionally with items",
    request_body = CreateBody,
    responses((status = 200, description = "The conversation", body = crate::openapi::Conversation)))]
/// `POST /v1/conversations`
pub async fn create(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsWrite>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope;
    let b: CreateBody = json_body(&headers, body).await?;
    let metadata = check_metadata(b.metadata)?;
    let items = parse_items(b.items.unwrap_or_default(), true)?;
    check_vectors(&st, &scope, &items)?;
    let (rec, _) = st
        .store
        .create_conversation(&scope, metadata, items)
        .await?;
    Ok(Json(conversation_json(&rec)))
}

#[utoipa::path(get, path = "/v1/conversations/{id}", tag = crate::openapi::CONVERSATIONS,
    operation_id = "getConversation", summary = "Retrieve a conversation", params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    responses((status = 200, description = "The conversation", body = crate::openapi::Conversation)))]
/// `GET /v1/conversations/{id}`
pub async fn retrieve(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsRead>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope;
    let rec = st.store.get_conversation(&scope, &path(id)?).await?;
    Ok(Json(conversation_json(&rec)))
}

#[utoipa::path(post, path = "/v1/conversations/{id}", tag = crate::openapi::CONVERSATIONS,
    operation_id = "updateConversation", summary = "Replace a conversation's metadata", params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    request_body = UpdateBody,
    responses((status = 200, description = "The conversation", body = crate::openapi::Conversation)))]
/// `POST /v1/conversations/{id}`
pub async fn update(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsWrite>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope;
    let id = path(id)?;
    let b: UpdateBody = json_body(&headers, body).await?;
    let Some(metadata) = b.metadata else {
        return Err(ApiError::invalid_param("metadata", "metadata is required"));
    };
    let metadata = check_metadata(Some(metadata))?;
    let rec = st.store.update_conversation(&scope, &id, metadata).await?;
    Ok(Json(conversation_json(&rec)))
}

#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = crate::openapi::CONVERSATIONS,
    operation_id = "deleteConversation", summary = "Delete a conversation and all its items", params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    responses((status = 200, description = "Deleted", body = crate::openapi::ConversationDeleted)))]
/// `DELETE /v1/conversations/{id}`
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsWrite>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope;
    let id = path(id)?;
    st.store.delete_conversation(&scope, &id).await?;
    Ok(Json(
        json!({"id": id, "object": "conversation.deleted", "deleted": true}),
    ))
}

#[utoipa::path(post, path = "/v1/conversations/{id}/items", tag = crate::openapi::CONVERSATIONS,
    operation_id = "createConversationItems", summary = "Append items atomically, in order",
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)"), ("include" = Option<Vec<String>>, Query, description = "Accepted and ignored")),
    request_body = ItemsBody,
    responses((status = 200, description = "The items as stored", body = crate::openapi::ItemList),
        (status = 409, description = "An item id given by the client already exists", body = crate::openapi::ErrorResponse)))]
/// `POST /v1/conversations/{id}/items`
pub async fn add_items(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsWrite>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    let scope = caller.scope;
    let id = path(id)?;
    let b: ItemsBody = json_body(&headers, body).await?;
    let items = parse_items(b.items, false)?;
    check_vectors(&st, &scope, &items)?;
    let stored = st.store.append_items(&scope, &id, items).await?;
    Ok(item_list(&stored, false))
}

struct ListParams {
    after: Option<String>,
    limit: usize,
    order: Order,
}

fn list_params(raw: Option<&str>) -> ApiResult<ListParams> {
    let mut p = ListParams {
        after: None,
        limit: DEFAULT_PAGE,
        order: Order::Desc,
    };
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "after" => p.after = Some(v),
            "limit" => p.limit = limit_param(&v, MAX_PAGE)?,
            "order" => {
                p.order = match v.as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => {
                        return Err(ApiError::invalid_param(
                            "order",
                            "order must be asc or desc",
                        ))
                    }
                }
            }
            _ => {} // `include` and unknown parameters are accepted and ignored.
        }
    }
    Ok(p)
}

#[utoipa::path(get, path = "/v1/conversations/{id}/items", tag = crate::openapi::CONVERSATIONS,
    operation_id = "listConversationItems", summary = "List a conversation's items",
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)"),
        ("after" = Option<String>, Query, description = "An item id of this conversation: the page starts after it"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Items per page (default 20)"),
        ("order" = Option<String>, Query, description = "`asc` or `desc` (default)"),
        ("include" = Option<Vec<String>>, Query, description = "Accepted and ignored")),
    responses((status = 200, description = "A page of items", body = crate::openapi::ItemList)))]
/// `GET /v1/conversations/{id}/items`
pub async fn list_items(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsRead>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let scope = caller.scope;
    let id = path(id)?;
    let p = list_params(raw.as_deref())?;
    let page = st
        .store
        .list_items(&scope, &id, p.after.as_deref(), p.limit, p.order)
        .await
        .map_err(|e| match e {
            mnemo_storage::StoreError::Invalid(m) => ApiError::invalid_param("after", m),
            e => e.into(),
        })?;
    Ok(item_list(&page.items, page.has_more))
}

#[utoipa::path(get, path = "/v1/conversations/{id}/items/{item_id}", tag = crate::openapi::CONVERSATIONS,
    operation_id = "getConversationItem", summary = "Retrieve an item",
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)"), ("item_id" = String, Path, description = "The item's id")),
    responses((status = 200, description = "The item", body = crate::openapi::Item)))]
/// `GET /v1/conversations/{id}/items/{item_id}`
pub async fn get_item(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsRead>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let scope = caller.scope;
    let (id, item_id) = path(ids)?;
    let item = st.store.get_item(&scope, &id, &item_id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], item.json).into_response())
}

#[utoipa::path(delete, path = "/v1/conversations/{id}/items/{item_id}", tag = crate::openapi::CONVERSATIONS,
    operation_id = "deleteConversationItem", summary = "Delete an item; answers with the conversation",
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)"), ("item_id" = String, Path, description = "The item's id")),
    responses((status = 200, description = "The conversation", body = crate::openapi::Conversation)))]
/// `DELETE /v1/conversations/{id}/items/{item_id}`
pub async fn delete_item(
    State(st): State<AppState>,
    caller: Caller<need::ConversationsWrite>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope;
    let (id, item_id) = path(ids)?;
    let rec = st.store.delete_item(&scope, &id, &item_id).await?;
    Ok(Json(conversation_json(&rec)))
}
